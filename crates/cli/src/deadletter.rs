//! `omnirelay deadletter list|redrive`: the events sinks refused for good.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use omnirelay_replication::delivery::{DeadLetter, DeadLetterLog, RedriveTarget, redrive};
use omnirelay_replication::{DurableReplicator, StreamId};
use omnirelay_resourcelease::{ResourceLeaseCodec, ResourceLeaseReplicationEvent};

use crate::node::NodeArgs;
use crate::{counted, exit_status, table};

/// Every dead-letter log under `data_dir` (`deadletter/<stream>/<sink>.jsonl`),
/// as (stream, sink, path), in order.
fn letter_logs(data_dir: &Path) -> anyhow::Result<Vec<(String, String, PathBuf)>> {
    // A mistyped directory is not one without letters.
    if !data_dir.is_dir() {
        bail!("no data directory {}", data_dir.display());
    }
    let root = data_dir.join("deadletter");
    let mut out = Vec::new();
    let streams = match std::fs::read_dir(&root) {
        Ok(streams) => streams,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.display())),
    };
    for stream in streams {
        let stream = stream?.path();
        if !stream.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&stream)? {
            let path = file?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Archives of redriven letters are `<sink>.redriven-<ticks>.jsonl`.
            if let Some(sink) = name.strip_suffix(".jsonl")
                && !sink.contains(".redriven-")
            {
                let stream_name = stream
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .to_owned();
                out.push((stream_name, sink.to_owned(), path.clone()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Prints the dead letters under `data_dir` (of one stream, of one sink):
/// a table, or with `json` one letter per line as stored.
pub(crate) fn list(
    data_dir: &Path,
    stream: Option<&str>,
    sink: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut letters: Vec<DeadLetter> = Vec::new();
    for (log_stream, log_sink, path) in letter_logs(data_dir)? {
        if stream.is_some_and(|s| s != log_stream) || sink.is_some_and(|s| s != log_sink) {
            continue;
        }
        let read = DeadLetterLog::read(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for (line, _) in &read.unreadable {
            writeln!(
                io::stderr(),
                "warning: {} line {line} is not a dead letter (a write torn by a crash, or an edit): skipped, kept in the file",
                path.display()
            )?;
        }
        letters.extend(read.letters);
    }
    let mut out = io::stdout().lock();
    if json {
        for letter in &letters {
            serde_json::to_writer(&mut out, letter)?;
            writeln!(out)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if letters.is_empty() {
        writeln!(
            out,
            "no dead letters in {}",
            data_dir.join("deadletter").display()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|l| {
            vec![
                l.stream.clone(),
                l.sink.clone(),
                l.sequence.to_string(),
                l.event_type.clone(),
                l.error_kind.clone(),
                l.dead_lettered_at.clone(),
                l.error.clone(),
            ]
        })
        .collect();
    out.write_all(
        table(
            &[
                "STREAM",
                "SINK",
                "SEQUENCE",
                "TYPE",
                "KIND",
                "DEAD-LETTERED",
                "ERROR",
            ],
            &rows,
        )
        .as_bytes(),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Applies the dead letters of `sink` in `stream` to the sink again, read
/// from the log, with the node stopped (the log's lock is held meanwhile).
pub(crate) async fn redrive_sink(
    node: &NodeArgs,
    sink_name: &str,
    stream: &str,
) -> anyhow::Result<ExitCode> {
    let valid = node.load()?;
    let stream = StreamId::new(stream)?;
    let codec = Arc::new(ResourceLeaseCodec);
    // Holding the log: no node may deliver (or dead-letter) meanwhile.
    let log = DurableReplicator::<ResourceLeaseReplicationEvent>::open(
        codec.clone(),
        valid.durable.clone(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot hold the log in {} (stop the node that uses it first)",
            valid.data_dir.display()
        )
    })?;
    let Some((sink, built)) = valid.build_sink(sink_name).await? else {
        let names: Vec<&str> = valid.sinks.iter().map(|s| s.name.as_str()).collect();
        log.close().await?;
        bail!(
            "no sink named {sink_name:?} in the configuration (it has: {})",
            names.join(", ")
        );
    };
    let target = RedriveTarget {
        data_dir: &valid.data_dir,
        stream: &stream,
        sink_name,
        encoding: sink.options.encoding,
        batch: sink.options.batch.max_events,
    };
    let outcome = redrive(target, &built, codec).await;
    let closed = built.close_dyn().await;
    log.close().await?;
    let redriven = outcome?;
    closed.map_err(omnirelay_replication::SinkError::into_error)?;
    let mut out = io::stdout().lock();
    match (redriven.applied.first(), redriven.applied.last()) {
        (Some(first), Some(last)) => writeln!(
            out,
            "redrove {} to sink {sink_name} in stream {stream} (sequences {first}–{last}); the letters are archived in {}",
            counted(redriven.applied.len(), "event"),
            redriven
                .archive
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string())
        )?,
        _ if redriven.missing.is_empty() && redriven.behind.is_empty() => writeln!(
            out,
            "no dead letters of sink {sink_name} in stream {stream} to redrive"
        )?,
        _ => {}
    }
    if !redriven.missing.is_empty() {
        writeln!(
            out,
            "{} {}: the log no longer holds sequences {:?} (their payloads are in the letters)",
            counted(redriven.missing.len(), "letter"),
            stay(redriven.missing.len()),
            redriven.missing
        )?;
    }
    if let (Some(first), Some(refusal)) = (redriven.behind.first(), &redriven.refusal) {
        writeln!(
            out,
            "{} {}: sink {sink_name} has gone on to sequence {} and cannot take sequences {:?} behind it ({refusal}); the events are in the log (`omnirelay log replay --data-dir {dir} --stream {stream} --from {first}`) and in the letters (`omnirelay deadletter list --data-dir {dir} --json`)",
            counted(redriven.behind.len(), "letter"),
            stay(redriven.behind.len()),
            redriven.checkpoint,
            redriven.behind,
            dir = valid.data_dir.display(),
        )?;
    }
    // Letters that stay are work left undone: say so to a script too.
    Ok(exit_status(
        redriven.missing.is_empty() && redriven.behind.is_empty(),
    ))
}

/// The verb after [`counted`] letters.
fn stay(letters: usize) -> &'static str {
    if letters == 1 { "stays" } else { "stay" }
}
