//! `omnirelay publish`: JSON lines on stdin into the durable log, each
//! sequence printed once it is durable.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use omnirelay_replication::{DurableReplicator, PendingPublish, SinkExt, StreamId};
use omnirelay_resourcelease::telemetry::{self, LagRecording};
use omnirelay_resourcelease::{ResourceLeaseCodec, ResourceLeaseReplicationEvent, json};
use tokio::sync::mpsc;

use crate::node::{self, NodeArgs, Server};
use crate::{counted, exit_status};

type Event = ResourceLeaseReplicationEvent;

/// Runs `omnirelay publish`: the node's configuration (the embedded default:
/// one stream, `fsync`, a JSON-lines export), with `--listen` serving
/// `/metrics` until the input ends.
pub(crate) async fn run(args: &NodeArgs, stream: &str) -> anyhow::Result<ExitCode> {
    let stream = StreamId::new(stream)?;
    let valid = args.load()?;
    node::install_logging(valid.telemetry.log_format, &valid.telemetry.log_level);
    // Without a listener nobody can read metrics: record none.
    let server = match &valid.listen {
        Some(listen) => Some(Server::start(listen, &valid, node::install_metrics()?).await?),
        None => None,
    };
    let replicator = Arc::new(
        valid
            .build_with(Arc::new(ResourceLeaseCodec), |_, sink| {
                LagRecording::new(sink).shared()
            })
            .await
            .with_context(|| format!("cannot start replication in {}", valid.data_dir.display()))?,
    );
    if let Some(server) = &server {
        server.set_ready(node::replication_health(replicator.clone()));
    }
    // Receipts are printed in order by a separate task, so that reading
    // and appending go on while earlier events are being synced.
    let (tx, rx) = mpsc::channel::<Submitted>(1024);
    let printer = tokio::spawn(print_receipts(rx));
    let (lines_tx, mut lines_rx) = mpsc::channel::<Vec<Line>>(16);
    let reader = tokio::task::spawn_blocking(move || read_lines(&lines_tx));
    let mut invalid = 0u64;
    let mut published = 0u64;
    let mut failed = None;
    'input: while let Some(lines) = lines_rx.recv().await {
        // The lines read at once are appended at once (one record write,
        // one wake-up of each sink); one at a time as they come.
        let mut numbers = Vec::with_capacity(lines.len());
        let mut events = Vec::with_capacity(lines.len());
        for (number, line) in lines {
            match json::decode(&line) {
                Ok(event) => {
                    telemetry::record_published(&event);
                    numbers.push(number);
                    events.push(event);
                }
                Err(err) => {
                    invalid += 1;
                    node::say(true, &format!("line {number}: {err}"));
                }
            }
        }
        if events.is_empty() {
            continue;
        }
        let (submitted, error) = submit(&replicator, &stream, &numbers, events).await;
        for submitted in submitted {
            let sequences = submitted.0.sequences();
            published += sequences.end() + 1 - sequences.start();
            // The printer failed: its error ends the run below.
            if tx.send(submitted).await.is_err() {
                break 'input;
            }
        }
        if error.is_some() {
            failed = error;
            break;
        }
    }
    drop((tx, lines_rx));
    // What was published is printed before any error. Lines submitted
    // before the refused one that did not become durable (the log stopped
    // while they were being written) are the first not acknowledged: their
    // error is the one to report. The reader may be waiting for a line:
    // not waited for.
    printer.await.context("receipt printer failed")??;
    if let Some(error) = failed {
        return Err(error);
    }
    reader.await.context("stdin reader failed")??;
    wait_for_sinks(&replicator).await?;
    replicator.close().await?;
    if let Some(server) = server {
        server.stop().await;
    }
    node::say(
        false,
        &format!(
            "published {} to stream {stream} ({}); sinks caught up",
            counted(published, "event"),
            counted(invalid, "invalid line")
        ),
    );
    Ok(exit_status(invalid == 0))
}

/// Waits until the sinks have everything, saying what it waits for every
/// few seconds (a sink that keeps failing is retried until it recovers).
async fn wait_for_sinks(replicator: &DurableReplicator<Event>) -> anyhow::Result<()> {
    let caught_up = replicator.wait_caught_up();
    tokio::pin!(caught_up);
    loop {
        tokio::select! {
            () = &mut caught_up => return Ok(()),
            () = tokio::time::sleep(std::time::Duration::from_secs(3)) => {
                for sink in replicator.sink_snapshots().await.iter().filter(|s| s.lag_events > 0) {
                    node::say(true, &format!(
                        "waiting for sink {} of stream {}: {} behind{}",
                        sink.sink,
                        sink.stream,
                        counted(sink.lag_events, "event"),
                        sink.last_error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
                    ));
                }
            }
        }
    }
}

/// A line of input and its number.
type Line = (u64, Vec<u8>);

/// The most lines read and appended at once.
const MAX_LINES: usize = 512;

/// A submission and the lines its events came from.
type Submitted = (PendingPublish<Event>, String);

/// `line N` or `lines N-M` for the events of lines `numbers`.
fn lines_label(numbers: &[u64]) -> String {
    match (numbers.first(), numbers.last()) {
        (Some(first), Some(last)) if first != last => format!("lines {first}-{last}"),
        _ => format!("line {}", numbers.first().copied().unwrap_or_default()),
    }
}

/// Submits `events` (from lines `numbers`) at once; when that is refused,
/// one by one, so that the error names the line it is about and the
/// events before it are published, as they would be one at a time. What
/// was submitted (one submission per event published, or one for all),
/// and the error that stopped it.
async fn submit(
    replicator: &DurableReplicator<Event>,
    stream: &StreamId,
    numbers: &[u64],
    events: Vec<Event>,
) -> (Vec<Submitted>, Option<anyhow::Error>) {
    let count = events.len();
    let events = match replicator.submit_all(stream, events).await {
        Ok(pending) => return (vec![(pending, lines_label(numbers))], None),
        // All or none are queued: none were.
        Err(parts) => match parts.event {
            Some(events) if events.len() == count => events,
            _ => {
                return (
                    Vec::new(),
                    Some(anyhow::anyhow!("{}: {}", lines_label(numbers), parts.error)),
                );
            }
        },
    };
    let mut pending = Vec::with_capacity(count);
    for (number, event) in numbers.iter().zip(events) {
        match replicator.submit(stream, event).await {
            Ok(one) => pending.push((one, format!("line {number}"))),
            Err(e) => {
                return (
                    pending,
                    Some(anyhow::anyhow!("line {number}: {}", e.error())),
                );
            }
        }
    }
    (pending, None)
}

/// Reads stdin's lines, sending the ones already read together (up to
/// [`MAX_LINES`]): never waiting for more while a complete line is there.
fn read_lines(tx: &mpsc::Sender<Vec<Line>>) -> io::Result<()> {
    let mut stdin = io::BufReader::with_capacity(1 << 16, io::stdin().lock());
    let mut number = 0u64;
    loop {
        let mut lines = Vec::new();
        let mut ended = false;
        loop {
            let mut line = Vec::new();
            if stdin.read_until(b'\n', &mut line)? == 0 {
                ended = true;
                break;
            }
            number += 1;
            if !line.trim_ascii().is_empty() {
                lines.push((number, line));
            }
            if lines.len() == MAX_LINES || !stdin.buffer().contains(&b'\n') {
                break;
            }
        }
        if !lines.is_empty() && tx.blocking_send(lines).is_err() {
            return Ok(());
        }
        if ended {
            return Ok(());
        }
    }
}

/// Prints each submission's sequences once they are durable, in order; a
/// submission that cannot become durable ends it with an error naming its
/// lines (the first not acknowledged: nothing after them was printed).
async fn print_receipts(mut rx: mpsc::Receiver<Submitted>) -> anyhow::Result<()> {
    let mut out = io::BufWriter::new(io::stdout());
    while let Some((pending, lines)) = rx.recv().await {
        let sequences = pending.sequences();
        if let Err(error) = pending.durable().await {
            out.flush()?;
            anyhow::bail!("{lines}: not acknowledged: {error}");
        }
        for sequence in sequences {
            writeln!(out, "{sequence}")?;
        }
        if rx.is_empty() {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use omnirelay_replication::{
        DeliveryMode, DurableOptions, DurableReplicator, ErrorKind, Record, Sink, SinkError,
        SinkExt as _, SinkOptions, StreamId, WhenFull,
    };
    use omnirelay_resourcelease::{
        ResourceLeaseCodec, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType,
    };

    use super::submit;

    /// A sink that is always down.
    struct Down;

    impl Sink for Down {
        async fn apply(&self, _batch: &[Record<'_>]) -> Result<(), SinkError> {
            Err(SinkError::new(ErrorKind::Unavailable, "down"))
        }
    }

    fn enqueue() -> ResourceLeaseReplicationEvent {
        ResourceLeaseReplicationEvent::new(ResourceLeaseReplicationEventType::Enqueue)
    }

    /// Lines refused together are tried one by one: the error names the
    /// line that cannot go in, and the lines before it are published, as
    /// they would be one at a time.
    #[tokio::test]
    async fn a_refused_batch_is_published_line_by_line_up_to_the_refused_line() {
        let dir = tempfile::tempdir().unwrap();
        let replicator = DurableReplicator::open(
            Arc::new(ResourceLeaseCodec),
            DurableOptions::new(dir.path()),
        )
        .await
        .unwrap();
        let options = SinkOptions {
            mode: DeliveryMode::Required {
                max_lag_events: 2,
                when_full: WhenFull::Reject,
            },
            ..SinkOptions::default()
        };
        replicator
            .add_sink("down", Down.shared(), options)
            .await
            .unwrap();
        let stream = StreamId::default();
        let (first, error) = submit(&replicator, &stream, &[1], vec![enqueue()]).await;
        assert_eq!((first.len(), error.is_none()), (1, true));
        // One behind: three more are over the budget of two together, the
        // first of them alone is not.
        let (published, error) = submit(
            &replicator,
            &stream,
            &[2, 3, 4],
            vec![enqueue(), enqueue(), enqueue()],
        )
        .await;
        let error = error.expect("refused");
        assert!(error.to_string().starts_with("line 3: "), "{error}");
        let sequences: Vec<_> = published.iter().map(|(p, _)| p.sequences()).collect();
        assert_eq!(sequences, [2..=2], "line 2 published, on its own");
        assert_eq!(replicator.last_sequence(&stream), 2);
        replicator.close().await.unwrap();
    }
}
