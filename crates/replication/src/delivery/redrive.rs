//! Redriving a sink's dead letters: once whatever made a sink refuse
//! events is fixed, the events it dead-lettered are read again from the
//! log, in the sink's encoding, and applied to it once more.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::delivery::{DeadLetter, DeadLetterLog, LetterFile};
use crate::error::{Error, ErrorKind};
use crate::event::{Codec, Encoding, ReplicationEvent};
use crate::record::{OwnedRecord, Record};
use crate::replay::{Replay, Replayed};
use crate::sink::SharedSink;
use crate::stream::StreamId;
use crate::time::Timestamp;

/// What a redrive did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redriven {
    /// The sequences applied to the sink again, in order.
    pub applied: Vec<u64>,
    /// Dead-lettered sequences the log no longer holds (retention removed
    /// them) or cannot read (damaged): left as dead letters, their
    /// payloads are in the letters (none for damaged records).
    pub missing: Vec<u64>,
    /// Dead-lettered sequences at or below the sink's checkpoint that the
    /// sink cannot take (see [`Sink::fill_gaps`](crate::Sink::fill_gaps)):
    /// left as dead letters.
    pub behind: Vec<u64>,
    /// The sink's checkpoint when the redrive started (0: none).
    pub checkpoint: u64,
    /// Why the sink refused the sequences `behind`.
    pub refusal: Option<String>,
    /// Where the redriven letters were moved (`<sink>.redriven-<ticks>.jsonl`
    /// beside the dead-letter log), an audit trail.
    pub archive: Option<PathBuf>,
}

/// Everything needed to redrive one sink of one stream.
#[derive(Clone, Copy, Debug)]
pub struct RedriveTarget<'a> {
    /// The data directory (the log under `log/`, the dead letters under
    /// `deadletter/`).
    pub data_dir: &'a Path,
    /// The stream.
    pub stream: &'a StreamId,
    /// The sink's name.
    pub sink_name: &'a str,
    /// The sink's encoding (the form it was fed).
    pub encoding: Encoding,
    /// Records per `apply` call.
    pub batch: usize,
}

fn io_error(what: &str, path: &Path, err: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("cannot {what} {}", path.display()),
    )
    .with_source(err)
}

/// Writes `letters` to `path` through a temporary file renamed over it
/// (removes `path` when there are none), after the lines of it that were
/// not letters: what a redrive cannot read, it does not throw away.
fn rewrite(
    path: &Path,
    unreadable: &[(usize, String)],
    letters: &[&DeadLetter],
) -> Result<(), Error> {
    if letters.is_empty() && unreadable.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("remove", path, e)),
            _ => Ok(()),
        };
    }
    let temporary = path.with_extension("jsonl.tmp");
    write_letters(&temporary, unreadable, letters)?;
    std::fs::rename(&temporary, path).map_err(|e| io_error("replace", path, e))
}

fn write_letters(
    path: &Path,
    unreadable: &[(usize, String)],
    letters: &[&DeadLetter],
) -> Result<(), Error> {
    let mut file = std::fs::File::create(path).map_err(|e| io_error("create", path, e))?;
    for (_, line) in unreadable {
        file.write_all(line.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .map_err(|e| io_error("write", path, e))?;
    }
    for letter in letters {
        let mut line = serde_json::to_vec(letter)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("a dead letter: {e}")))?;
        line.push(b'\n');
        file.write_all(&line)
            .map_err(|e| io_error("write", path, e))?;
    }
    file.sync_all().map_err(|e| io_error("sync", path, e))
}

/// The record of `sequence` in `encoding`, if the log still holds it.
fn read_one<E: ReplicationEvent>(
    target: &RedriveTarget<'_>,
    codec: &Arc<dyn Codec<E>>,
    sequence: u64,
) -> Result<Option<OwnedRecord>, Error> {
    let mut replay = match Replay::<E>::open(
        target.data_dir,
        target.stream,
        sequence,
        codec.clone(),
        target.encoding,
    ) {
        Ok(replay) => replay,
        // Before the oldest segment kept: gone.
        Err(e) if e.kind() == ErrorKind::Config => return Err(e),
        Err(_) => return Ok(None),
    };
    loop {
        return match replay.next() {
            Some(Ok(Replayed::Record(record))) if record.sequence() == sequence => Ok(Some(record)),
            Some(Err(e)) if e.kind() == ErrorKind::Corrupt => match replay.skip_damaged() {
                // Lost to damage in the log: its letter stays.
                Some(lost) if lost.contains(&sequence) => Ok(None),
                // Damage before it, on the way there.
                Some(lost) if *lost.end() < sequence => continue,
                _ => Err(e),
            },
            Some(Err(e)) => Err(e),
            _ => Ok(None),
        };
    }
}

/// Applies to `sink` every event it dead-lettered in the target's stream,
/// read from the log in order, and moves the letters to an archive; the
/// letters of events the log no longer holds stay. Events at or below the
/// sink's [`checkpoint`](crate::Sink::checkpoint) — the sink went on past
/// them — go through [`fill_gaps`](crate::Sink::fill_gaps), since `apply`
/// would take them for re-sends and ignore them; the letters of those a
/// sink cannot take that way (it keeps a high-water mark) stay too. A
/// failure keeps the letters of every event not yet applied (the sink is
/// idempotent, so a later redrive may apply a batch twice, never lose
/// one).
///
/// The data directory must not be in use: a running node's drivers append
/// letters meanwhile. `omnirelay deadletter redrive` holds the log's lock.
///
/// # Errors
///
/// Reading the letters or the log, asking the sink its checkpoint, the
/// sink's error (with the first sequence not applied), or writing the
/// letters back.
pub async fn redrive<E: ReplicationEvent>(
    target: RedriveTarget<'_>,
    sink: &SharedSink,
    codec: Arc<dyn Codec<E>>,
) -> Result<Redriven, Error> {
    let path = DeadLetterLog::path(
        &target.data_dir.join("deadletter"),
        target.stream.as_str(),
        target.sink_name,
    );
    let LetterFile {
        letters,
        unreadable,
    } = DeadLetterLog::read(&path).map_err(|e| io_error("read", &path, e))?;
    if letters.is_empty() {
        return Ok(Redriven::default());
    }
    // A letter written twice (the event refused again after a restart)
    // is one event.
    let sequences: BTreeSet<u64> = letters.iter().map(|l| l.sequence).collect();
    let mut records = Vec::new();
    let mut missing = Vec::new();
    for &sequence in &sequences {
        match read_one(&target, &codec, sequence)? {
            Some(record) => records.push(record),
            None => missing.push(sequence),
        }
    }
    let checkpoint = sink
        .checkpoint_dyn(target.stream)
        .await
        .map_err(|e| {
            let kind = e.error().kind();
            Error::new(
                kind,
                format!(
                    "cannot ask sink {} where it stands in stream {}",
                    target.sink_name, target.stream
                ),
            )
            .with_source(e.into_error())
        })?
        .unwrap_or(0);
    let split = records.partition_point(|r| r.sequence() <= checkpoint);
    let (gaps, after) = records.split_at(split);
    let mut applied = Vec::new();
    let mut behind = Vec::new();
    let mut refusal = None;
    // The letters that stay whatever happens next.
    let mut stay: BTreeSet<u64> = missing.iter().copied().collect();
    let passes = [(gaps, true), (after, false)];
    let size = target.batch.max(1);
    for (records, filling) in passes {
        for (n, chunk) in records.chunks(size).enumerate() {
            let borrowed: Vec<Record<'_>> = chunk.iter().map(OwnedRecord::as_record).collect();
            let result = if filling {
                sink.fill_gaps_dyn(&borrowed).await
            } else {
                sink.apply_dyn(&borrowed).await
            };
            match result {
                Ok(()) => applied.extend(chunk.iter().map(OwnedRecord::sequence)),
                // The sink keeps a high-water mark: what lies behind it
                // cannot go there, and its letters stay.
                Err(error) if filling && error.error().kind() == ErrorKind::Unsupported => {
                    behind = records[n * size..]
                        .iter()
                        .map(OwnedRecord::sequence)
                        .collect();
                    stay.extend(&behind);
                    refusal = Some(error.error().to_string());
                    break;
                }
                Err(error) => {
                    let first = chunk[0].sequence();
                    let kept: Vec<&DeadLetter> = letters
                        .iter()
                        .filter(|l| stay.contains(&l.sequence) || l.sequence >= first)
                        .collect();
                    rewrite(&path, &unreadable, &kept)?;
                    return Err(Error::new(
                        error.error().kind(),
                        format!(
                            "sink {} refused the redrive from sequence {first} on ({} applied before)",
                            target.sink_name,
                            applied.len()
                        ),
                    )
                    .with_source(error.into_error()));
                }
            }
        }
    }
    let (kept, done): (Vec<&DeadLetter>, Vec<&DeadLetter>) =
        letters.iter().partition(|l| stay.contains(&l.sequence));
    let archive = if done.is_empty() {
        None
    } else {
        let archive = path.with_file_name(format!(
            "{}.redriven-{}.jsonl",
            target.sink_name,
            Timestamp::now().ticks()
        ));
        write_letters(&archive, &[], &done)?;
        Some(archive)
    };
    rewrite(&path, &unreadable, &kept)?;
    Ok(Redriven {
        applied,
        missing,
        behind,
        checkpoint,
        refusal,
        archive,
    })
}
