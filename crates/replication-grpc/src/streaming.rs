//! The version-2 service `omnirelay.replication.v2.Replication`:
//! `PublishStream` into a [`Receiver`] and `Subscribe` to any stream of the
//! node's log.

use std::io::Read as _;
use std::iter::Peekable;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use omnirelay_replication::node::node_name;
use omnirelay_replication::{
    DurableReplicator, Encoding, Error, ErrorKind, Format, Replay, Replayed, StreamId, WireVersion,
};
use omnirelay_resourcelease::{ResourceLeaseReplicationEvent, codec};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::client::format_of;
use crate::quarantine::Unreadable;
use crate::receiver::{Incoming, Receiver, sender_of, status_of};
use crate::telemetry;
use crate::v2::replication_server::{Replication, ReplicationServer};
use crate::v2::{
    PayloadFormat, PublishAck, PublishBatch, SnapshotChunk, SnapshotRequest, StreamRecord,
    SubscribeBatch, SubscribeRequest,
};

type Event = ResourceLeaseReplicationEvent;

/// `PublishStream` batches queued in the log ahead of their
/// acknowledgement, at most.
const PIPELINE: usize = 8;

/// Records per `Subscribe` message, at most.
const SUBSCRIBE_BATCH_EVENTS: usize = 1024;
/// Payload bytes per `Subscribe` message, at most (one larger record is
/// still sent alone).
const SUBSCRIBE_BATCH_BYTES: usize = 1 << 20;

/// Bytes per `Snapshot` message, at most.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// A snapshot of a stream's state: what a node that folds its stream (a
/// dispatcher's queue) keeps so that it need not fold it from the start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The last sequence of the stream it holds.
    pub through: u64,
    /// The state, in the node's own format.
    pub data: Vec<u8>,
}

/// A snapshot as a node serves it: its state read as it is sent (a file,
/// typically), never held in memory whole.
pub struct SnapshotReader {
    /// The last sequence of the stream it holds.
    pub through: u64,
    /// The state, in the node's own format.
    pub data: Box<dyn std::io::Read + Send>,
}

impl SnapshotReader {
    /// A snapshot held in memory.
    pub fn from_bytes(through: u64, data: Vec<u8>) -> Self {
        Self {
            through,
            data: Box::new(std::io::Cursor::new(data)),
        }
    }
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("through", &self.through)
            .finish_non_exhaustive()
    }
}

/// Where a node's snapshots come from, for `Snapshot` (see
/// [`StreamingService::with_snapshots`]). The framework does not read them:
/// a replica of the same kind does.
pub trait SnapshotSource: Send + Sync + std::fmt::Debug {
    /// The newest snapshot of `stream`; `None` when there is none. Called
    /// on a blocking thread; the snapshot is read on one too, a chunk at a
    /// time as the receiver takes them.
    ///
    /// # Errors
    ///
    /// The snapshot cannot be read.
    fn snapshot(&self, stream: &StreamId) -> Result<Option<SnapshotReader>, Error>;
}

/// The version-2 replication service of a node: `Subscribe` to any stream
/// of its log, `Snapshot` of a stream's state when the node keeps one,
/// and, when the node receives, `PublishStream` into its [`Receiver`].
#[derive(Debug, Clone)]
pub struct StreamingService {
    replicator: Arc<DurableReplicator<Event>>,
    receiver: Option<Arc<Receiver>>,
    snapshots: Option<Arc<dyn SnapshotSource>>,
    stop: Option<watch::Receiver<bool>>,
}

impl StreamingService {
    /// The service of a node with log `replicator`; `receiver` takes
    /// `PublishStream` (without one, it answers `UNIMPLEMENTED`, and
    /// senders fall back to what else they can do).
    pub fn new(replicator: Arc<DurableReplicator<Event>>, receiver: Option<Arc<Receiver>>) -> Self {
        Self {
            replicator,
            receiver,
            snapshots: None,
            stop: None,
        }
    }

    /// Serves `Snapshot` from `snapshots` (without it, `Snapshot` answers
    /// `NOT_FOUND`).
    #[must_use]
    pub fn with_snapshots(mut self, snapshots: Arc<dyn SnapshotSource>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// Ends every subscription and publishing stream (cleanly: the peer
    /// sees the end of the stream) once `stop` turns true, so that a
    /// graceful shutdown of the server does not wait for peers that would
    /// never leave.
    #[must_use]
    pub fn stopping_on(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// The tonic server of this service.
    pub fn server(self) -> ReplicationServer<Self> {
        ReplicationServer::new(self)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
}

/// The stream a request names (empty: `default`).
fn stream_of(name: &str) -> Result<StreamId, Status> {
    if name.is_empty() {
        return Ok(StreamId::default());
    }
    StreamId::new(name).map_err(|e| Status::invalid_argument(format!("stream: {e}")))
}

/// Resolves once `stop` turns true (never without one).
async fn stopped(stop: Option<&mut watch::Receiver<bool>>) {
    match stop {
        Some(stop) => {
            let _ = stop.wait_for(|stop| *stop).await;
        }
        None => std::future::pending().await,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The batch's events: protobuf ones as they came (the receiver reads
/// what it needs of them), JSON ones decoded; one that cannot be read (an
/// unknown future version or type) goes to the quarantine as it came.
fn decode_batch(batch: PublishBatch) -> Vec<Incoming> {
    let format = format_of(PayloadFormat::try_from(batch.format).unwrap_or_default());
    if format == Format::Protobuf {
        return batch
            .events
            .into_iter()
            .map(|sent| Incoming::Protobuf {
                sequence: sent.sequence,
                payload: sent.payload,
            })
            .collect();
    }
    batch
        .events
        .into_iter()
        .map(|sent| match codec::decode(format, &sent.payload) {
            Ok(mut event) => {
                // The batch's numbering is the sender's word for it.
                event.sequence_number = i64::try_from(sent.sequence).unwrap_or(0);
                Incoming::Event(event)
            }
            Err(e) => Incoming::Unreadable(Unreadable {
                sequence: sent.sequence,
                format,
                payload: sent.payload.to_vec(),
                reason: e.to_string(),
            }),
        })
        .collect()
}

/// Where a subscription stands: the next sequence to send, and the open
/// reader while it has more.
struct Follow {
    _open: Subscriber,
    replicator: Arc<DurableReplicator<Event>>,
    stream: StreamId,
    encoding: Encoding,
    next: u64,
    visible: u64,
    reader: Option<Peekable<Replay<Event>>>,
    /// Whether the first message went out: when there is nothing to send
    /// yet, it is an empty batch with the head, so that a follower knows
    /// where the stream stands at once.
    greeted: bool,
}

/// Counts an open subscription in [`telemetry::SUBSCRIBERS`] while alive.
struct Subscriber(metrics::Gauge);

impl Subscriber {
    fn new(stream: &StreamId) -> Self {
        let gauge = metrics::gauge!(telemetry::SUBSCRIBERS, "stream" => stream.as_str().to_owned());
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Follow {
    /// The next message: records from `next` on, waiting for new ones.
    async fn next_batch(&mut self) -> Result<SubscribeBatch, Error> {
        if !self.greeted {
            self.greeted = true;
            if self.next > self.visible {
                return Ok(SubscribeBatch {
                    head: self.visible,
                    ..SubscribeBatch::default()
                });
            }
        }
        if self.next > self.visible {
            self.visible = self
                .replicator
                .wait_visible_beyond(&self.stream, self.next - 1)
                .await?;
        }
        // A log that began after a sequence (a standby begun from its
        // primary's checkpoint) never held what comes before: refused, as
        // what retention deleted is, rather than read as nothing for ever.
        let begun = self.replicator.started_after(&self.stream);
        if self.next <= begun {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "the log of stream {} began after sequence {begun}: it never held sequence {}",
                    self.stream, self.next
                ),
            ));
        }
        let mut reader = match self.reader.take() {
            Some(reader) => reader,
            None => self
                .replicator
                .replay(&self.stream, self.next, self.encoding)
                .await?
                .peekable(),
        };
        let (next, through) = (self.next, self.visible);
        // The log's files are read on a blocking thread.
        let (reader, batch) = tokio::task::spawn_blocking(move || {
            let batch = read_batch(&mut reader, next, through);
            (reader, batch)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("log reader: {e}")))?;
        let (mut batch, exhausted) = batch?;
        if !exhausted {
            self.reader = Some(reader);
        } else if batch.records.is_empty() && batch.skipped.is_empty() {
            // Nothing readable yet though the log says there is: do not
            // spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let last = batch
            .records
            .last()
            .map(|r| r.sequence)
            .into_iter()
            .chain(batch.skipped.iter().copied())
            .max();
        self.next = last.map_or(self.next, |last| last + 1);
        batch.head = self.visible;
        Ok(batch)
    }
}

/// Reads records `next..=through` (or as many as fit one message) from
/// `reader`. Returns the batch and whether the reader ran dry.
fn read_batch(
    reader: &mut Peekable<Replay<Event>>,
    next: u64,
    through: u64,
) -> Result<(SubscribeBatch, bool), Error> {
    let mut batch = SubscribeBatch::default();
    let mut bytes = 0usize;
    let mut expected = next;
    while expected <= through && batch.records.len() + batch.skipped.len() < SUBSCRIBE_BATCH_EVENTS
    {
        let sequence = match reader.peek() {
            None => return Ok((batch, true)),
            // What was read before a failure (a damaged record) goes out
            // first; the failure ends the next read.
            Some(Err(_)) if !batch.records.is_empty() || !batch.skipped.is_empty() => {
                return Ok((batch, false));
            }
            Some(Err(_)) => {
                return Err(reader
                    .next()
                    .and_then(Result::err)
                    .unwrap_or_else(|| Error::new(ErrorKind::Internal, "log reader")));
            }
            Some(Ok(Replayed::Record(record))) => record.sequence(),
            Some(Ok(Replayed::Skipped { sequence, .. })) => *sequence,
        };
        if sequence > through {
            break;
        }
        if sequence != expected {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "the log no longer holds sequence {expected} (it starts at {sequence}): retention removed it"
                ),
            ));
        }
        if let Some(Ok(Replayed::Record(record))) = reader.peek() {
            if !batch.records.is_empty() && bytes + record.bytes().len() > SUBSCRIBE_BATCH_BYTES {
                break;
            }
            bytes += record.bytes().len();
        }
        match reader.next() {
            Some(Ok(Replayed::Record(record))) => batch.records.push(StreamRecord {
                sequence,
                payload: record.bytes().clone(),
            }),
            Some(Ok(Replayed::Skipped { .. })) => batch.skipped.push(sequence),
            _ => break,
        }
        expected += 1;
    }
    Ok((batch, false))
}

#[tonic::async_trait]
impl Replication for StreamingService {
    type PublishStreamStream = BoxStream<PublishAck>;
    type SubscribeStream = BoxStream<SubscribeBatch>;
    type SnapshotStream = BoxStream<SnapshotChunk>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishBatch>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let receiver = self.receiver.clone().ok_or_else(|| {
            Status::unimplemented("this node does not receive events (it is not a receiver)")
        })?;
        let sender = sender_of(request.metadata())?;
        let mut inbound = request.into_inner();
        let mut stop = self.stop.clone();
        // Batches are taken and queued in the log in order while earlier
        // ones are being made durable; acknowledgements go back in order,
        // each once its batch is durable.
        let (queued, durable) = mpsc::channel(PIPELINE);
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    batch = inbound.message() => batch,
                    () = stopped(stop.as_mut()) => return,
                };
                let submitted = match batch {
                    Ok(Some(batch)) => receiver
                        .submit_incoming(&sender, decode_batch(batch))
                        .await
                        .map_err(|e| status_of(&e)),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = submitted.is_err();
                if queued.send(submitted).await.is_err() || failed {
                    return;
                }
            }
        });
        let acks = futures::stream::unfold(durable, |mut durable| async move {
            let outcome = match durable.recv().await? {
                Ok(submitted) => submitted.durable().await.map_err(|e| status_of(&e)),
                Err(status) => Err(status),
            };
            let ack = outcome.map(|outcome| PublishAck {
                epoch: outcome.epoch,
                high_water: outcome.high_water,
                appended: outcome.appended,
                duplicates: outcome.duplicates,
            });
            Some((ack, durable))
        });
        Ok(Response::new(Box::pin(acks)))
    }

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let stream = stream_of(&request.into_inner().stream)?;
        let none = || Status::not_found(format!("this node keeps no snapshot of stream {stream}"));
        let source = self.snapshots.clone().ok_or_else(none)?;
        let read = {
            let stream = stream.clone();
            tokio::task::spawn_blocking(move || source.snapshot(&stream))
        };
        let snapshot = read
            .await
            .map_err(|e| Status::internal(format!("reading the snapshot: {e}")))?
            .map_err(|e| status_of(&e))?
            .ok_or_else(none)?;
        let SnapshotReader { through, mut data } = snapshot;
        // Read a chunk at a time on a blocking thread, at most two ahead of
        // the receiver; one message (empty) for an empty snapshot.
        let (chunks, taken) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            let mut first = true;
            loop {
                let mut chunk = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES);
                let read = (&mut data)
                    .take(SNAPSHOT_CHUNK_BYTES as u64)
                    .read_to_end(&mut chunk);
                let message = match read {
                    Ok(0) if !first => return,
                    Ok(_) => Ok(SnapshotChunk {
                        through,
                        data: chunk.into(),
                    }),
                    Err(e) => Err(Status::internal(format!("reading the snapshot: {e}"))),
                };
                let last = message.is_err();
                // The receiver gone: nothing more to send.
                if chunks.blocking_send(message).is_err() || last {
                    return;
                }
                first = false;
            }
        });
        let chunks = futures::stream::unfold(taken, |mut taken| async move {
            taken.recv().await.map(|chunk| (chunk, taken))
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let stream = stream_of(&request.stream)?;
        let version = match request.write_version {
            0 => WireVersion::V1,
            v => u16::try_from(v)
                .ok()
                .and_then(WireVersion::new)
                .ok_or_else(|| Status::invalid_argument(format!("write_version {v}")))?,
        };
        let format = format_of(
            PayloadFormat::try_from(request.format)
                .map_err(|_| Status::invalid_argument(format!("format {}", request.format)))?,
        );
        let Some(snapshot) = self
            .replicator
            .stream_snapshots()
            .await
            .into_iter()
            .find(|s| s.stream == stream.as_str())
        else {
            return Err(Status::not_found(format!(
                "this node has no stream {stream}"
            )));
        };
        let from = match (request.from_sequence, request.last) {
            (0, last) if last > 0 => snapshot.visible.saturating_sub(last) + 1,
            (from, _) => from.max(1),
        };
        let follow = Follow {
            _open: Subscriber::new(&stream),
            replicator: self.replicator.clone(),
            stream,
            encoding: Encoding::new(format, version),
            next: from,
            visible: snapshot.visible,
            greeted: false,
            reader: None,
        };
        let stop = self.stop.clone();
        let batches = futures::stream::unfold(Some((follow, stop)), |state| async move {
            let (mut follow, mut stop) = state?;
            let batch = tokio::select! {
                batch = follow.next_batch() => batch,
                () = stopped(stop.as_mut()) => return None,
            };
            match batch {
                Ok(batch) => Some((Ok(batch), Some((follow, stop)))),
                // The log closed: the node is shutting down.
                Err(error) if error.kind() == ErrorKind::Closed => None,
                Err(error) => Some((Err(status_of(&error)), None)),
            }
        });
        let mut response = Response::new(Box::pin(batches) as Self::SubscribeStream);
        // Who writes this log: a standby takes the name for its own, so
        // that its `grpc` sinks carry the stream on under the same name.
        match node_name(self.replicator.data_dir()) {
            Ok(name) => {
                if let Ok(value) = tonic::metadata::MetadataValue::try_from(name.as_str()) {
                    response
                        .metadata_mut()
                        .insert(crate::receiver::request::WRITER, value);
                }
            }
            Err(error) => tracing::debug!(%error, "no node name to send with a subscription"),
        }
        Ok(response)
    }
}
