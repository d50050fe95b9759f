//! `omnirelay log replay|verify|inspect|tail`: read-only, no lock, beside a
//! running writer.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use omnirelay_replication::delivery::{CheckpointStore, DeadLetterLog, FileCheckpointStore};
use omnirelay_replication::log::{LogReader, VerifyReport, read_meta};
use omnirelay_replication::{
    DurableReplicator, Encoding, Format, Replay, Replayed, StreamId, WireVersion,
};
use omnirelay_resourcelease::{ResourceLeaseCodec, ResourceLeaseReplicationEvent};

use crate::{counted, exit_status};

type Event = ResourceLeaseReplicationEvent;

fn streams(data_dir: &Path) -> anyhow::Result<Vec<StreamId>> {
    let dir = data_dir.join("log");
    let entries = std::fs::read_dir(&dir).with_context(|| {
        format!(
            "no replication log in {} (expected {})",
            data_dir.display(),
            dir.display()
        )
    })?;
    let mut out: Vec<StreamId> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| StreamId::new(e.file_name().to_str()?).ok())
        .collect();
    out.sort();
    Ok(out)
}

/// Fails, naming what is there, unless `data_dir` holds a log of `stream`.
fn has_stream(data_dir: &Path, stream: &StreamId) -> anyhow::Result<()> {
    let found = streams(data_dir)?;
    if found.contains(stream) {
        return Ok(());
    }
    let names: Vec<&str> = found.iter().map(StreamId::as_str).collect();
    bail!(
        "stream {stream} has no log in {} (it has: {})",
        data_dir.display(),
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    )
}

fn encoding(write_version: u16) -> anyhow::Result<Encoding> {
    let version = WireVersion::new(write_version).context("version 0 does not exist")?;
    Ok(Encoding::new(Format::Json, version))
}

/// What [`print_from`] printed.
struct Printed {
    /// The next sequence to read.
    next: u64,
    /// Whether an error was met (each is reported on stderr).
    failed: bool,
    /// Whether one of them was not read past: an event this binary cannot
    /// render, or damage without `past_damage`.
    stopped: bool,
}

/// Prints the records of `sequences` (as far as the log goes). With
/// `past_damage`, records lost to damage in sealed segments are reported
/// and read past instead of ending it.
fn print_from(
    data_dir: &Path,
    stream: &StreamId,
    sequences: std::ops::RangeInclusive<u64>,
    encoding: Encoding,
    past_damage: bool,
    out: &mut impl Write,
) -> anyhow::Result<Printed> {
    let (from, through) = sequences.into_inner();
    let mut replay = Replay::<Event>::open(
        data_dir,
        stream,
        from,
        Arc::new(ResourceLeaseCodec),
        encoding,
    )?;
    let mut next = from;
    let (mut failed, mut stopped) = (false, false);
    while next <= through
        && let Some(item) = replay.next()
    {
        match item {
            Ok(Replayed::Record(record)) if record.sequence() > through => break,
            Ok(Replayed::Skipped { sequence, .. }) if sequence > through => break,
            Ok(Replayed::Record(record)) => {
                out.write_all(record.bytes())?;
                out.write_all(b"\n")?;
                next = record.sequence() + 1;
            }
            Ok(Replayed::Skipped { sequence, reason }) => {
                writeln!(io::stderr(), "sequence {sequence} skipped: {reason}")?;
                next = sequence + 1;
            }
            Err(err) => {
                writeln!(io::stderr(), "omnirelay: {err}")?;
                failed = true;
                if err.kind() != omnirelay_replication::ErrorKind::Corrupt {
                    // The replay goes on after an unreadable event; a
                    // follower does not.
                    stopped = true;
                } else {
                    match replay.skip_damaged().filter(|_| past_damage) {
                        Some(lost) => {
                            writeln!(
                                io::stderr(),
                                "sequences {}..={} lost to damage: going on after them",
                                lost.start(),
                                lost.end().min(&through)
                            )?;
                            next = lost.end() + 1;
                        }
                        None => {
                            stopped = true;
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(Printed {
        next,
        failed,
        stopped,
    })
}

/// `log replay`: the events of `sequences` (`None`: to the end).
pub(crate) fn replay(
    data_dir: &Path,
    stream: &str,
    from: u64,
    through: Option<u64>,
    write_version: u16,
    past_damage: bool,
) -> anyhow::Result<ExitCode> {
    let stream = StreamId::new(stream)?;
    has_stream(data_dir, &stream)?;
    let from = from.max(1);
    let through = through.unwrap_or(u64::MAX);
    if through < from {
        bail!("--to {through} is before --from {from}: there is nothing to print");
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    let encoding = encoding(write_version)?;
    let printed = print_from(
        data_dir,
        &stream,
        from..=through,
        encoding,
        past_damage,
        &mut out,
    )?;
    out.flush()?;
    if printed.next == from && !printed.failed {
        say_nothing_from(&stream, from);
    }
    Ok(exit_status(!printed.failed))
}

/// Says that a read printed nothing at all, rather than leave an empty
/// output to guess at.
fn say_nothing_from(stream: &StreamId, from: u64) {
    crate::node::say(
        false,
        &format!("stream {stream} has no events from sequence {from} on"),
    );
}

/// `log tail`: with `past_damage` (a local log only), records lost to
/// damage are reported and read past, also while following.
pub(crate) async fn tail(
    source: &TailSource,
    stream: &str,
    lines: u64,
    from: Option<u64>,
    follow: bool,
    write_version: u16,
    past_damage: bool,
) -> anyhow::Result<ExitCode> {
    let data_dir = match source {
        TailSource::Local(dir) => dir,
        TailSource::Remote(connection) => {
            return tail_remote(connection, stream, lines, from, follow, write_version).await;
        }
    };
    let stream = StreamId::new(stream)?;
    has_stream(data_dir, &stream)?;
    let encoding = encoding(write_version)?;
    let mut next = match from {
        Some(from) => from.max(1),
        None => {
            let dir = DurableReplicator::<Event>::stream_dir(data_dir, &stream);
            let last = LogReader::new(&dir).last_sequence()?.unwrap_or(0);
            last.saturating_sub(lines) + 1
        }
    };
    let mut failed = false;
    loop {
        let mut out = io::BufWriter::new(io::stdout().lock());
        let printed = print_from(
            data_dir,
            &stream,
            next..=u64::MAX,
            encoding,
            past_damage,
            &mut out,
        )?;
        out.flush()?;
        failed |= printed.failed;
        if printed.stopped || !follow {
            if printed.next == next && !failed {
                say_nothing_from(&stream, next);
            }
            return Ok(exit_status(!failed));
        }
        next = printed.next;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often a long check says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Verifies the log of `stream` in `dir`, saying on stderr how far it got
/// every [`PROGRESS_EVERY`] while it takes longer (a log of gigabytes).
fn verify_stream(stream: &StreamId, dir: &Path) -> anyhow::Result<VerifyReport> {
    let mut said = std::time::Instant::now();
    let report = LogReader::new(dir).verify_with_progress(|progress| {
        if said.elapsed() >= PROGRESS_EVERY {
            said = std::time::Instant::now();
            crate::node::say(
                false,
                &format!(
                    "checking stream {stream}: {} of {} segments, {} MiB read",
                    progress.checked,
                    progress.segments,
                    progress.bytes / (1024 * 1024)
                ),
            );
        }
    })?;
    Ok(report)
}

/// A dispatcher's (or standby's) queue checkpoint beside a stream, as
/// its next start would take it.
enum QueueCheckpoint {
    /// None: not a dispatcher's stream, or none saved yet.
    None,
    /// One the start would use.
    Usable(omnirelay_dispatcher::checkpoint::Summary),
    /// One the start would set aside, folding the whole stream instead.
    Unusable(String),
    /// The queue cannot be rebuilt: the log lacks events before its
    /// first that no usable checkpoint covers.
    Lost(String),
}

fn queue_checkpoint(
    data_dir: &Path,
    stream: &StreamId,
    started: u64,
    report: &VerifyReport,
) -> QueueCheckpoint {
    use omnirelay_dispatcher::checkpoint;
    let last = report.last.unwrap_or(started);
    let found = checkpoint::summary(data_dir, stream).and_then(|summary| {
        summary
            .map(
                |summary| match checkpoint::unusable_beside(summary.through, started, last) {
                    None => Ok(summary),
                    Some(why) => Err(why),
                },
            )
            .transpose()
    });
    // Where the log lacks events of the queue, only a checkpoint through
    // the last of them lets a start rebuild it: a log that retention
    // trimmed past a checkpoint begins after the queue's first event, and
    // one begun from a primary's checkpoint (a standby) after the events
    // that checkpoint holds.
    let begun = checkpoint::begun_from_checkpoint(data_dir, stream, started);
    let lacks = if begun {
        Some((
            started,
            format!(
                "the log began after event {started}, from its primary's queue checkpoint through it"
            ),
        ))
    } else {
        report
            .first
            .filter(|&first| first > started + 1)
            .map(|first| {
                (
                    first - 1,
                    format!("the log begins at event {first}, not {}", started + 1),
                )
            })
    };
    let cannot = "a dispatcher cannot rebuild its queue";
    match (found, lacks) {
        (Ok(Some(summary)), Some((through, why))) if summary.through < through => {
            QueueCheckpoint::Lost(format!(
                "the queue checkpoint is through event {}, and {why}: events {} to {through} \
                 are gone, and {cannot}",
                summary.through,
                summary.through + 1,
            ))
        }
        (Ok(Some(summary)), _) => QueueCheckpoint::Usable(summary),
        // Only a log begun from a checkpoint is known to be a queue's
        // without one (a receiver's log may be trimmed too).
        (Ok(None), Some((_, why))) if begun => {
            QueueCheckpoint::Lost(format!("there is no queue checkpoint, and {why}: {cannot}"))
        }
        (Ok(None), _) => QueueCheckpoint::None,
        (Err(why), Some((_, lacks))) => {
            QueueCheckpoint::Lost(format!("the queue checkpoint {why}, and {lacks}: {cannot}"))
        }
        (Err(why), None) => QueueCheckpoint::Unusable(format!("the queue checkpoint {why}")),
    }
}

pub(crate) fn verify(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let streams = streams(data_dir)?;
    if streams.is_empty() {
        bail!("no streams in {}", data_dir.join("log").display());
    }
    let mut out = io::stdout().lock();
    let mut ok = true;
    for stream in streams {
        let dir = DurableReplicator::<Event>::stream_dir(data_dir, &stream);
        let report = verify_stream(&stream, &dir)?;
        let meta = read_meta(&dir).unwrap_or_default();
        let range = match (report.first, report.last) {
            (Some(first), Some(last)) => format!("{first}..={last}"),
            _ => "empty".to_owned(),
        };
        let lost = if report.lost > 0 {
            format!(", {} lost to damage", report.lost)
        } else {
            String::new()
        };
        writeln!(
            out,
            "stream {stream}: {} ({} in {}, {} bytes{lost}), durability {}, {} bytes cut at recovery",
            range,
            counted(report.records, "record"),
            counted(report.segments, "segment"),
            report.bytes,
            if meta.durability.is_empty() {
                "unknown"
            } else {
                &meta.durability
            },
            meta.recovery_cut_bytes_total
        )?;
        if report.incomplete_tail_bytes > 0 {
            writeln!(
                out,
                "  note: {} bytes at the end are a record being written (or a torn write the next open cuts)",
                report.incomplete_tail_bytes
            )?;
        }
        for problem in &report.problems {
            writeln!(out, "  problem: {problem}")?;
            ok = false;
        }
        match queue_checkpoint(data_dir, &stream, meta.started_after.unwrap_or(0), &report) {
            QueueCheckpoint::None => {}
            QueueCheckpoint::Usable(summary) => {
                writeln!(out, "  queue checkpoint through event {}", summary.through)?
            }
            QueueCheckpoint::Unusable(why) => writeln!(
                out,
                "  note: {why}; a dispatcher's start sets it aside and folds the whole stream"
            )?,
            QueueCheckpoint::Lost(why) => {
                writeln!(out, "  problem: {why}")?;
                ok = false;
            }
        }
    }
    writeln!(out, "{}", if ok { "log ok" } else { "log DAMAGED" })?;
    Ok(exit_status(ok))
}

pub(crate) fn inspect(data_dir: &Path, only: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut out = io::stdout().lock();
    let store = FileCheckpointStore::new(&data_dir.join("checkpoints"));
    for stream in streams(data_dir)? {
        if only.is_some_and(|s| s != stream.as_str()) {
            continue;
        }
        let dir = DurableReplicator::<Event>::stream_dir(data_dir, &stream);
        let meta = read_meta(&dir).unwrap_or_default();
        let report = verify_stream(&stream, &dir)?;
        writeln!(out, "stream {stream}")?;
        writeln!(out, "  durability     {}", meta.durability)?;
        writeln!(out, "  encoding       {}", meta.encoding)?;
        writeln!(
            out,
            "  sequences      {}..={}",
            report.first.unwrap_or(0),
            report.last.unwrap_or(0)
        )?;
        writeln!(out, "  records        {}", report.records)?;
        if report.lost > 0 {
            writeln!(
                out,
                "  lost           {} to damage (`omnirelay log verify` names them)",
                crate::counted(report.lost, "record")
            )?;
        }
        writeln!(
            out,
            "  segments       {} ({} bytes)",
            report.segments, report.bytes
        )?;
        writeln!(
            out,
            "  recovery cut   {} bytes in total",
            meta.recovery_cut_bytes_total
        )?;
        if let Some(cut) = &meta.last_cut {
            writeln!(
                out,
                "  last cut       {} bytes of {} at {}: {}",
                cut.bytes, cut.segment, cut.at, cut.reason
            )?;
        }
        if let Some(after) = meta.started_after {
            let why = if omnirelay_dispatcher::checkpoint::begun_from_checkpoint(
                data_dir, &stream, after,
            ) {
                "begun as a standby from its primary's queue checkpoint through it"
            } else {
                "its sinks held records of an earlier log up to it"
            };
            writeln!(out, "  started after  {after} ({why})")?;
        }
        match queue_checkpoint(data_dir, &stream, meta.started_after.unwrap_or(0), &report) {
            QueueCheckpoint::None => {}
            QueueCheckpoint::Usable(summary) => writeln!(
                out,
                "  queue          checkpoint through event {}: {}, {} leased, {} dead-lettered{}",
                summary.through,
                counted(summary.pending, "item") + " pending",
                summary.leased,
                summary.dead_lettered,
                if summary.drained { ", drained" } else { "" }
            )?,
            QueueCheckpoint::Unusable(why) => writeln!(
                out,
                "  queue          {why}: a dispatcher's start sets it aside and folds the whole stream"
            )?,
            QueueCheckpoint::Lost(why) => writeln!(out, "  queue          {why}")?,
        }
        let sinks_dir = data_dir.join("checkpoints").join(stream.as_str());
        let mut sinks: Vec<String> = std::fs::read_dir(&sinks_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(str::to_owned)
            })
            .collect();
        sinks.sort();
        for sink in sinks {
            let checkpoint = store.load(&stream, &sink).ok().flatten().unwrap_or(0);
            let letters = DeadLetterLog::read_all(&DeadLetterLog::path(
                &data_dir.join("deadletter"),
                stream.as_str(),
                &sink,
            ))?
            .len();
            writeln!(
                out,
                "  sink {sink:<12} checkpoint {checkpoint}, lag {}, {}",
                crate::counted(report.last.unwrap_or(0).saturating_sub(checkpoint), "event"),
                crate::counted(letters, "dead letter")
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `log tail` reads: a local data directory or a remote node.
#[derive(Debug)]
pub(crate) enum TailSource {
    /// A data directory on this machine.
    Local(std::path::PathBuf),
    /// A node's `Subscribe`.
    Remote(omnirelay_replication_grpc::Connection),
}

/// `log tail --url`: the newest events of a remote node's stream (or from
/// `from`), then with `follow` every new one as it is appended. A follower
/// outlives the node: when it stops or the connection breaks, the follower
/// subscribes again from the next sequence once the node is back, so that
/// nothing is printed twice or skipped; it stops (exit status 1) if the
/// node comes back with another log.
async fn tail_remote(
    connection: &omnirelay_replication_grpc::Connection,
    stream: &str,
    lines: u64,
    from: Option<u64>,
    follow: bool,
    write_version: u16,
) -> anyhow::Result<ExitCode> {
    use omnirelay_replication_grpc::Subscription;
    let stream = StreamId::new(stream)?;
    let encoding = encoding(write_version)?;
    let mut subscription = match from {
        Some(from) => Subscription::open(connection, &stream, from, encoding).await,
        None => Subscription::open_last(connection, &stream, lines, encoding).await,
    }
    .with_context(|| format!("cannot subscribe to stream {stream} at {}", connection.url))?;
    let writer = subscription.writer().map(str::to_owned);
    // Without --follow, it stops at the head the node reports first.
    let first = subscription.next().await?;
    let head = first.as_ref().map_or(0, |batch| batch.head);
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut batch = Ok(first);
    loop {
        let ended = match batch {
            Ok(Some(current)) => {
                print_batch(&mut out, &current, write_version)?;
                // An empty batch says there is nothing (more) to read now.
                let nothing = current.records.is_empty() && current.skipped.is_empty();
                if !follow && (nothing || subscription.position() > head) {
                    return Ok(ExitCode::SUCCESS);
                }
                batch = subscription.next().await;
                continue;
            }
            Ok(None) => format!(
                "{} ended the subscription (it is shutting down)",
                connection.url
            ),
            Err(error)
                if follow && error.kind() == omnirelay_replication::ErrorKind::Unavailable =>
            {
                format!("lost {}: {error}", connection.url)
            }
            Err(error) => return Err(error.into()),
        };
        if !follow {
            crate::node::say(true, &ended);
            return Ok(ExitCode::SUCCESS);
        }
        let next = subscription.position();
        crate::node::say(
            true,
            &format!("{ended}; following on from sequence {next} once it is back (Ctrl-C stops)"),
        );
        let (again, first) = resubscribe(connection, &stream, next, encoding).await?;
        if let Some(why) = another_log(writer.as_deref(), again.writer(), first.head, next) {
            crate::node::say(
                true,
                &format!(
                    "{} is back with another log: {why}; stopping",
                    connection.url
                ),
            );
            return Ok(ExitCode::FAILURE);
        }
        crate::node::say(
            true,
            &format!(
                "{} is back: following on from sequence {next}",
                connection.url
            ),
        );
        subscription = again;
        batch = Ok(Some(first));
    }
}

/// Prints a subscription batch's records, one per line, and says which
/// sequences have no form in `write_version`.
fn print_batch(
    out: &mut impl Write,
    batch: &omnirelay_replication_grpc::v2::SubscribeBatch,
    write_version: u16,
) -> io::Result<()> {
    for record in &batch.records {
        out.write_all(&record.payload)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    for sequence in &batch.skipped {
        crate::node::say(
            true,
            &format!("sequence {sequence} skipped: it has no form in version {write_version}"),
        );
    }
    Ok(())
}

/// Subscribes again from `next`, retrying while the node cannot be reached
/// (saying why when that changes): the subscription and its first batch.
/// A refusal of another kind (the stream is not there) ends it.
async fn resubscribe(
    connection: &omnirelay_replication_grpc::Connection,
    stream: &StreamId,
    next: u64,
    encoding: Encoding,
) -> anyhow::Result<(
    omnirelay_replication_grpc::Subscription,
    omnirelay_replication_grpc::v2::SubscribeBatch,
)> {
    use omnirelay_replication_grpc::Subscription;
    let mut backoff = Duration::from_millis(100);
    let mut said = None;
    loop {
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        let error = match Subscription::open(connection, stream, next, encoding).await {
            Ok(mut subscription) => match subscription.next().await {
                Ok(Some(first)) => return Ok((subscription, first)),
                // Shutting down again.
                Ok(None) => continue,
                Err(error) => error,
            },
            Err(error) => error,
        };
        if error.kind() != omnirelay_replication::ErrorKind::Unavailable {
            return Err(anyhow::Error::new(error).context(format!(
                "cannot subscribe to stream {stream} at {} again",
                connection.url
            )));
        }
        // Each error is said once while it lasts; a different one (a
        // token refused now) is said when it comes.
        let text = error.to_string();
        if said.as_ref() != Some(&text) {
            crate::node::say(
                true,
                &format!("still waiting for {}: {text}", connection.url),
            );
            said = Some(text);
        }
    }
}

/// Why a node that came back at a follower's URL holds another log than
/// the one it followed, if it does: another writer's name, or a stream that
/// ends before what was already printed (`next` − 1).
fn another_log(before: Option<&str>, now: Option<&str>, head: u64, next: u64) -> Option<String> {
    if let (Some(before), Some(now)) = (before, now)
        && before != now
    {
        return Some(format!("its log is {now}'s, not {before}'s"));
    }
    let printed = next.saturating_sub(1);
    (head < printed).then(|| {
        format!("its stream ends at sequence {head}, before sequence {printed} already printed")
    })
}

#[cfg(test)]
mod tests {
    use super::another_log;

    #[test]
    fn a_node_back_with_another_writer_or_a_shorter_stream_holds_another_log() {
        // The same writer, its stream at or past what was printed (8).
        assert_eq!(another_log(Some("a"), Some("a"), 8, 9), None);
        assert_eq!(another_log(Some("a"), Some("a"), 20, 9), None);
        // A node that does not say who writes is judged by its stream.
        assert_eq!(another_log(None, Some("a"), 8, 9), None);
        assert_eq!(another_log(Some("a"), None, 8, 9), None);
        let other = another_log(Some("a"), Some("b"), 20, 9).unwrap();
        assert_eq!(other, "its log is b's, not a's");
        let shorter = another_log(Some("a"), Some("a"), 3, 9).unwrap();
        assert_eq!(
            shorter,
            "its stream ends at sequence 3, before sequence 8 already printed"
        );
        // Nothing printed yet: any stream will do.
        assert_eq!(another_log(None, None, 0, 1), None);
    }
}
