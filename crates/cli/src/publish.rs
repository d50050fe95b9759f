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

use crate::exit_status;
use crate::node::{self, NodeArgs, Server};

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
    let replicator = valid
        .build_with(Arc::new(ResourceLeaseCodec), |_, sink| {
            LagRecording::new(sink).shared()
        })
        .await
        .with_context(|| format!("cannot start replication in {}", valid.data_dir.display()))?;
    if let Some(server) = &server {
        server.set_ready();
    }
    // Receipts are printed in order by a separate task, so that reading
    // and appending go on while earlier events are being synced.
    let (tx, rx) = mpsc::channel::<PendingPublish<Event>>(16 * 1024);
    let printer = tokio::spawn(print_receipts(rx));
    let (lines_tx, mut lines_rx) = mpsc::channel::<(u64, Vec<u8>)>(1024);
    let reader = tokio::task::spawn_blocking(move || read_lines(&lines_tx));
    let mut invalid = 0u64;
    let mut published = 0u64;
    while let Some((number, line)) = lines_rx.recv().await {
        let event = match json::decode(&line) {
            Ok(event) => event,
            Err(err) => {
                invalid += 1;
                node::say(true, &format!("line {number}: {err}"));
                continue;
            }
        };
        telemetry::record_published(&event);
        let pending = replicator
            .submit(&stream, event)
            .await
            .map_err(|e| anyhow::anyhow!("line {number}: {}", e.error()))?;
        published += 1;
        if tx.send(pending).await.is_err() {
            break;
        }
    }
    drop(tx);
    reader.await.context("stdin reader failed")??;
    printer.await.context("receipt printer failed")??;
    wait_for_sinks(&replicator).await?;
    replicator.close().await?;
    if let Some(server) = server {
        server.stop().await;
    }
    node::say(
        false,
        &format!(
            "published {published} events to stream {stream} ({invalid} invalid lines); sinks caught up"
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
                        "waiting for sink {} of stream {}: {} events behind{}",
                        sink.sink,
                        sink.stream,
                        sink.lag_events,
                        sink.last_error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
                    ));
                }
            }
        }
    }
}

fn read_lines(tx: &mpsc::Sender<(u64, Vec<u8>)>) -> io::Result<()> {
    let mut stdin = io::stdin().lock();
    let mut number = 0u64;
    loop {
        let mut line = Vec::new();
        if stdin.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        if line.trim_ascii().is_empty() {
            continue;
        }
        if tx.blocking_send((number, line)).is_err() {
            return Ok(());
        }
    }
}

async fn print_receipts(mut rx: mpsc::Receiver<PendingPublish<Event>>) -> anyhow::Result<()> {
    let mut out = io::BufWriter::new(io::stdout());
    while let Some(pending) = rx.recv().await {
        let receipt = pending.durable().await?;
        writeln!(out, "{}", receipt.sequence)?;
        if rx.is_empty() {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(())
}
