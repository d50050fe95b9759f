//! gRPC streaming replication between two processes: the grpc sink's
//! `PublishStream` into an `omnirelay serve --role receiver`, against raw
//! tonic streaming of the same bytes to a peer that only acknowledges.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use omnirelay_replication::{Encoding, OwnedRecord, SinkExt, StreamId, WireVersion};
use omnirelay_replication_grpc::v2::replication_client::ReplicationClient;
use omnirelay_replication_grpc::v2::replication_server::{Replication, ReplicationServer};
use omnirelay_replication_grpc::v2::{
    PayloadFormat, PublishAck, PublishBatch, SentEvent, SnapshotChunk, SnapshotRequest,
    SubscribeBatch, SubscribeRequest,
};
use omnirelay_replication_grpc::{GrpcSink, GrpcSinkOptions, Protocol};
use omnirelay_resourcelease::{
    ResourceLeaseItemPayload, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType,
    proto,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::scenario::raw::{self, SinkSide};
use crate::scenario::{Scenario, Side};

/// Events per pass (one sink batch, one stream message).
const BATCH: usize = 512;

/// `grpc-stream`: batches of 512 reference protobuf events (about 200 bytes
/// each) from the grpc sink over `PublishStream` to a receiver process that
/// appends them to its log (durability `none`: the OS cache) and
/// acknowledges, against the same bytes in the same messages over raw tonic
/// streaming to a process that acknowledges each message on arrival.
pub struct GrpcStream {
    runtime: tokio::runtime::Runtime,
    peers: Vec<Child>,
    candidate: SinkSide,
    raw: RawSession,
    raw_next: u64,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for GrpcStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcStream").finish_non_exhaustive()
    }
}

/// The protobuf (v1) bytes every benchmark event carries: an enqueue of
/// about 200 bytes. Its sequence travels beside it, as the sink sends it.
fn template() -> Bytes {
    let mut event = ResourceLeaseReplicationEvent::new(ResourceLeaseReplicationEventType::Enqueue);
    event.peer_id = Some("mesh-demo-host".to_owned());
    event.payload = Some(ResourceLeaseItemPayload {
        resource_type: "lakehouse.catalog".to_owned(),
        resource_id: "sales.orders".to_owned(),
        partition_key: "partition-2026-11-28".to_owned(),
        payload_encoding: "json".to_owned(),
        body: br#"{"operation":"compact","files":42}"#.to_vec(),
        attributes: None,
        request_id: Some("request-6f1c2a9e".to_owned()),
    });
    event.metadata.insert("queue.pending", "17");
    event.metadata.insert("queue.active", "3");
    Bytes::from(proto::encode(&event, WireVersion::V1).unwrap_or_default())
}

/// `count` records from `first` on, every one carrying `payload`.
fn records(payload: &Bytes, first: u64, count: usize) -> Vec<OwnedRecord> {
    raw::records(
        &StreamId::default(),
        first,
        count,
        Encoding::PROTOBUF_V1,
        |_| payload.clone(),
    )
}

/// Starts `peer ARGS` and reads its URL from its `listening on` line.
fn start_peer(peer: &Path, args: &[&str]) -> Result<(Child, String), String> {
    let mut child = Command::new(peer)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", peer.display()))?;
    let mut stderr = BufReader::new(child.stderr.take().ok_or("no stderr")?);
    let mut line = String::new();
    if stderr.read_line(&mut line).unwrap_or(0) == 0 {
        let _ = child.kill();
        return Err(format!(
            "{} {} did not start",
            peer.display(),
            args.join(" ")
        ));
    }
    let Some(address) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        return Err(format!("unexpected first line from the peer: {line}"));
    };
    let url = address.to_owned();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = stderr.read_to_end(&mut rest);
    });
    Ok((child, url))
}

/// An open raw `PublishStream` call.
struct RawSession {
    batches: mpsc::Sender<PublishBatch>,
    acks: Streaming<PublishAck>,
    payload: Bytes,
}

impl RawSession {
    async fn open(url: String, payload: Bytes) -> Result<Self, String> {
        let channel = Channel::from_shared(url)
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let (batches, outbound) = mpsc::channel(2);
        let acks = ReplicationClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
            .publish_stream(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        Ok(Self {
            batches,
            acks,
            payload,
        })
    }

    /// Sends the same message the sink would and waits for its
    /// acknowledgement.
    async fn send(&mut self, first: u64) -> Result<(), String> {
        let records = records(&self.payload, first, BATCH);
        let message = PublishBatch {
            format: PayloadFormat::Protobuf as i32,
            events: records
                .iter()
                .map(|r| SentEvent {
                    sequence: r.sequence(),
                    payload: r.bytes().clone(),
                })
                .collect(),
        };
        self.batches
            .send(message)
            .await
            .map_err(|_| "the raw peer hung up".to_owned())?;
        let ack = self
            .acks
            .message()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the raw peer ended the stream")?;
        if ack.high_water < first + BATCH as u64 - 1 {
            return Err(format!("short acknowledgement {}", ack.high_water));
        }
        Ok(())
    }
}

impl GrpcStream {
    /// Starts the receiver and the raw peer as child processes of `peer`
    /// (the `omnirelay` binary), the sink and the raw client.
    ///
    /// # Errors
    ///
    /// Why it cannot run (no binary to start the peers with, or they did
    /// not start).
    pub fn new(peer: Option<&Path>) -> Result<Self, String> {
        let peer = peer.ok_or(
            "it needs the omnirelay binary to start its peer processes (run it with `omnirelay bench`)",
        )?;
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let config = dir.path().join("receiver.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\n[telemetry]\nlog_level = \"warn\"\n[replication.log]\ndurability = \"none\"\n",
                dir.path().join("receiver").display()
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let config = config.to_str().ok_or("temporary path is not UTF-8")?;
        let mut peers = Vec::new();
        let started = (|| {
            let (receiver, receiver_url) = start_peer(
                peer,
                &[
                    "serve",
                    "--role",
                    "receiver",
                    "--listen",
                    "127.0.0.1:0",
                    "--config",
                    config,
                ],
            )?;
            peers.push(receiver);
            let (raw_peer, raw_url) = start_peer(peer, &["bench-peer", "--listen", "127.0.0.1:0"])?;
            peers.push(raw_peer);
            Ok::<_, String>((receiver_url, raw_url))
        })();
        let stop = |mut peers: Vec<Child>| {
            for peer in &mut peers {
                let _ = peer.kill();
                let _ = peer.wait();
            }
        };
        let (receiver_url, raw_url) = match started {
            Ok(urls) => urls,
            Err(why) => {
                stop(peers);
                return Err(why);
            }
        };
        let runtime = crate::scenario::runtime();
        let payload = template();
        let entered = runtime.enter();
        let sink = GrpcSink::new(GrpcSinkOptions {
            url: receiver_url,
            sender: "bench".to_owned(),
            timeout: Duration::from_secs(30),
            token: None,
            ca_pem: None,
            protocol: Protocol::Stream,
            writer: None,
        });
        drop(entered);
        let raw = runtime.block_on(RawSession::open(raw_url, payload.clone()));
        let (sink, raw) = match (sink, raw) {
            (Ok(sink), Ok(raw)) => (sink, raw),
            (Err(e), _) => {
                stop(peers);
                return Err(e.to_string());
            }
            (_, Err(e)) => {
                stop(peers);
                return Err(e);
            }
        };
        let made = payload.clone();
        Ok(Self {
            runtime,
            peers,
            candidate: SinkSide::with_records(
                sink.shared(),
                Box::new(move |first, count| records(&made, first, count)),
            ),
            raw,
            raw_next: 1,
            _dir: dir,
        })
    }
}

impl Drop for GrpcStream {
    fn drop(&mut self) {
        for peer in &mut self.peers {
            let _ = peer.kill();
            let _ = peer.wait();
        }
    }
}

impl Scenario for GrpcStream {
    fn name(&self) -> &'static str {
        "grpc-stream"
    }

    fn unit(&self) -> &'static str {
        "events"
    }

    fn baseline(&self) -> &'static str {
        "raw tonic streaming of the same messages to a peer process that only acknowledges"
    }

    fn target(&self) -> f64 {
        0.7
    }

    fn pass(&mut self, side: Side) -> u64 {
        match side {
            Side::Baseline => {
                self.runtime
                    .block_on(self.raw.send(self.raw_next))
                    .unwrap_or_else(|e| panic!("raw stream: {e}"));
                self.raw_next += BATCH as u64;
            }
            Side::Candidate => {
                self.candidate.pass(&self.runtime, BATCH);
            }
        }
        BATCH as u64
    }
}

/// The raw peer of `grpc-stream`: acknowledges every `PublishStream`
/// message on arrival with its last sequence, and nothing else.
#[derive(Debug, Clone, Copy)]
struct RawPeer;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for RawPeer {
    type PublishStreamStream = BoxStream<PublishAck>;
    type SubscribeStream = BoxStream<SubscribeBatch>;
    type SnapshotStream = BoxStream<SnapshotChunk>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishBatch>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let acks = futures::stream::unfold(request.into_inner(), |mut inbound| async move {
            match inbound.message().await {
                Ok(Some(batch)) => {
                    let high_water = batch.events.last().map_or(0, |e| e.sequence);
                    let ack = PublishAck {
                        epoch: 1,
                        high_water,
                        appended: batch.events.len() as u64,
                        duplicates: 0,
                    };
                    Some((Ok(ack), inbound))
                }
                Ok(None) => None,
                Err(status) => Some((Err(status), inbound)),
            }
        });
        Ok(Response::new(Box::pin(acks)))
    }

    async fn subscribe(
        &self,
        _request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("the raw peer only acknowledges"))
    }

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented("the raw peer only acknowledges"))
    }
}

/// Runs the raw peer of `grpc-stream` on `listen` until the process is
/// killed, after printing `listening on http://ADDR` on stderr.
///
/// # Errors
///
/// The address cannot be bound, or serving fails.
pub fn serve_raw_peer(listen: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let runtime = crate::scenario::runtime();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        writeln!(std::io::stderr(), "listening on http://{address}")?;
        tonic::transport::Server::builder()
            .add_service(
                ReplicationServer::new(RawPeer)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
            )
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await
            .map_err(std::io::Error::other)
    })
}
