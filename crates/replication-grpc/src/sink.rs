//! A sink that replicates to a receiver: over the version-2 `PublishStream`
//! when the receiver has it, else with the reference's unary `Publish`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use omnirelay_replication::{Error, ErrorKind, Format, Record, Sink, SinkError, StreamId};
use omnirelay_resourcelease::proto::pb::ResourceLeaseReplicationEventMessage;
use prost::Message as _;
use tokio::sync::{Mutex, mpsc};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::client::{Connection, Credentials, payload_format, status_error};
use crate::generated::resource_lease_replicator_grpc_client::ResourceLeaseReplicatorGrpcClient;
use crate::receiver::request;
use crate::v2::replication_client::ReplicationClient;
use crate::v2::{PayloadFormat, PublishAck, PublishBatch, SentEvent};

/// Events per `PublishStream` message, at most: a delivery batch larger
/// than this goes as several messages, pipelined.
const MESSAGE_EVENTS: usize = 512;
/// `PublishStream` messages sent and not yet acknowledged, at most.
const IN_FLIGHT: usize = 8;

/// Which service a [`GrpcSink`] calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `PublishStream`, falling back for good to `Publish` when the
    /// receiver answers `UNIMPLEMENTED` (a reference-style receiver).
    #[default]
    Auto,
    /// Only `PublishStream` (version 2).
    Stream,
    /// Only the reference's unary `Publish`, one call per event.
    Unary,
}

/// Knobs of a [`GrpcSink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcSinkOptions {
    /// The receiver's URL, `http://host:port`.
    pub url: String,
    /// This sender's name (the receiver keeps one high-water mark per
    /// sender). The stream `default` is sent under it, any other stream
    /// `s` as `<sender>/s`: each stream is numbered on its own.
    pub sender: String,
    /// The deadline of one call (unary) or of one batch's acknowledgement
    /// (streaming); also the connect timeout.
    pub timeout: Duration,
    /// A bearer token to send, if the receiver wants one.
    pub token: Option<String>,
    /// For an `https://` URL: the PEM certificate(s) of the authority that
    /// signed the receiver's certificate (`None`: the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Which service to call.
    pub protocol: Protocol,
    /// Who is behind the sender name ([`crate::request::WRITER`]): the
    /// `grpc` sink type sends its node's own name, so that the receiver
    /// refuses a second node configured with the same `sender` instead of
    /// dropping its events as duplicates. `None`: not said.
    pub writer: Option<String>,
}

/// An open `PublishStream` call, of one stream.
#[derive(Debug)]
struct Session {
    batches: mpsc::Sender<PublishBatch>,
    acks: tonic::Streaming<PublishAck>,
}

/// The `PublishStream` call of one stream, while open.
type StreamSession = Arc<Mutex<Option<Session>>>;

/// Replicates to a receiver, in order. With `PublishStream` each batch of
/// the delivery engine is one message, acknowledged once durable at the
/// receiver; with the reference's `Publish` each event is one call. The
/// receiver ignores re-sent events, so delivery retries are harmless; a
/// failed or timed-out call is a retryable error and the next attempt opens
/// a new call. Each stream goes under a sender name of its own (see
/// [`GrpcSinkOptions::sender`]), in a call of its own.
#[derive(Debug)]
pub struct GrpcSink {
    unary: ResourceLeaseReplicatorGrpcClient<Channel>,
    streaming: ReplicationClient<Channel>,
    credentials: Credentials,
    writer: Option<MetadataValue<Ascii>>,
    options: GrpcSinkOptions,
    sessions: std::sync::Mutex<HashMap<StreamId, StreamSession>>,
    /// The receiver answered `UNIMPLEMENTED` to `PublishStream`.
    unary_only: AtomicBool,
}

impl GrpcSink {
    /// A sink for the receiver at `options.url`; connects lazily (a
    /// receiver that is down is a retryable failure of `apply`). Call it
    /// inside a Tokio runtime (the channel's tasks start there).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for an invalid URL, sender name or token.
    pub fn new(options: GrpcSinkOptions) -> Result<Self, Error> {
        let connection = Connection {
            url: options.url.clone(),
            connect_timeout: options.timeout,
            token: options.token.clone(),
            ca_pem: options.ca_pem.clone(),
        };
        let credentials = Credentials::new(&connection, Some(&options.sender))?;
        let writer = options
            .writer
            .as_deref()
            .map(|writer| {
                MetadataValue::try_from(writer).map_err(|e| {
                    Error::new(ErrorKind::Config, format!("grpc: writer {writer:?}: {e}"))
                })
            })
            .transpose()?;
        let channel = connection.channel()?;
        Ok(Self {
            unary: ResourceLeaseReplicatorGrpcClient::new(channel.clone()),
            streaming: ReplicationClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            credentials,
            writer,
            sessions: std::sync::Mutex::new(HashMap::new()),
            unary_only: AtomicBool::new(options.protocol == Protocol::Unary),
            options,
        })
    }

    /// Whether the sink calls the unary `Publish` (configured so, or the
    /// receiver does not have `PublishStream`).
    pub fn is_unary(&self) -> bool {
        self.unary_only.load(Ordering::Relaxed)
    }

    /// The sender name of `stream`'s events, as request metadata.
    fn sender_of(&self, stream: &StreamId) -> Result<MetadataValue<Ascii>, Error> {
        let name = if *stream == StreamId::default() {
            self.options.sender.clone()
        } else {
            format!("{}/{stream}", self.options.sender)
        };
        MetadataValue::try_from(name.as_str())
            .map_err(|e| Error::new(ErrorKind::Config, format!("grpc: sender {name:?}: {e}")))
    }

    /// The metadata of a call carrying `stream`'s events.
    fn apply_credentials(
        &self,
        stream: &StreamId,
        metadata: &mut tonic::metadata::MetadataMap,
    ) -> Result<(), Error> {
        self.credentials.apply(metadata);
        metadata.insert(request::SENDER, self.sender_of(stream)?);
        if let Some(writer) = &self.writer {
            metadata.insert(request::WRITER, writer.clone());
        }
        Ok(())
    }

    /// The `PublishStream` call of `stream` (made on first use).
    fn session_of(&self, stream: &StreamId) -> StreamSession {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.entry(stream.clone()).or_default().clone()
    }

    async fn publish_one(&self, record: &Record<'_>) -> Result<(), Error> {
        let message =
            ResourceLeaseReplicationEventMessage::decode(record.bytes()).map_err(|e| {
                Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "grpc: sequence {} is not a replication message: {e}",
                        record.sequence()
                    ),
                )
            })?;
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.options.timeout);
        self.apply_credentials(record.stream(), request.metadata_mut())?;
        let mut client = self.unary.clone();
        match tokio::time::timeout(self.options.timeout, client.publish(request)).await {
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "grpc: publish sequence {}: no answer within {:?}",
                    record.sequence(),
                    self.options.timeout
                ),
            )),
            Ok(answer) => answer.map(|_| ()).map_err(|status| {
                status_error(&format!("publish sequence {}", record.sequence()), &status)
            }),
        }
    }

    async fn apply_unary(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        if let Some(record) = batch
            .iter()
            .find(|r| r.encoding().format != Format::Protobuf)
        {
            return Err(SinkError::new(
                ErrorKind::Config,
                format!(
                    "the reference's Publish takes protobuf messages, not {}",
                    record.encoding()
                ),
            ));
        }
        let mut through = None;
        for record in batch {
            if let Err(error) = self.publish_one(record).await {
                return Err(SinkError::from(error).applied_through(through));
            }
            through = Some(record.sequence());
        }
        Ok(())
    }

    /// Opens a `PublishStream` call for `stream`; `Ok(None)` if the
    /// receiver does not have it.
    async fn open_session(&self, stream: &StreamId) -> Result<Option<Session>, Error> {
        let (batches, outbound) = mpsc::channel(2);
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outbound));
        self.apply_credentials(stream, request.metadata_mut())?;
        let mut client = self.streaming.clone();
        match tokio::time::timeout(self.options.timeout, client.publish_stream(request)).await {
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "grpc: PublishStream to {}: no answer within {:?}",
                    self.options.url, self.options.timeout
                ),
            )),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Ok(None),
            Ok(Err(status)) => Err(status_error("open PublishStream", &status)),
            Ok(Ok(response)) => Ok(Some(Session {
                batches,
                acks: response.into_inner(),
            })),
        }
    }

    /// Sends `batch` as messages of at most [`MESSAGE_EVENTS`] events, up
    /// to [`IN_FLIGHT`] of them unacknowledged, and returns once the
    /// receiver acknowledged them all.
    async fn send_batch(&self, session: &mut Session, batch: &[Record<'_>]) -> Result<(), Error> {
        let mut unacknowledged = std::collections::VecDeque::with_capacity(IN_FLIGHT);
        for chunk in batch.chunks(MESSAGE_EVENTS) {
            let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
                continue;
            };
            if unacknowledged.len() == IN_FLIGHT {
                self.await_ack(session, unacknowledged.pop_front()).await?;
            }
            let message = PublishBatch {
                format: payload_format(first.encoding().format)? as i32,
                events: chunk
                    .iter()
                    .map(|record| SentEvent {
                        sequence: record.sequence(),
                        payload: record.shared_bytes(),
                    })
                    .collect(),
            };
            session
                .batches
                .send(message)
                .await
                .map_err(|_| self.lost())?;
            unacknowledged.push_back((first.sequence(), last.sequence()));
        }
        while let Some(range) = unacknowledged.pop_front() {
            self.await_ack(session, Some(range)).await?;
        }
        Ok(())
    }

    /// Sends an empty batch and returns the high-water mark its
    /// acknowledgement carries.
    async fn ask_mark(&self, session: &mut Session) -> Result<u64, Error> {
        let empty = PublishBatch {
            format: PayloadFormat::Protobuf as i32,
            events: Vec::new(),
        };
        session.batches.send(empty).await.map_err(|_| self.lost())?;
        match tokio::time::timeout(self.options.timeout, session.acks.message()).await {
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "grpc: the receiver did not say its mark within {:?}",
                    self.options.timeout
                ),
            )),
            Ok(Err(status)) => Err(status_error("PublishStream", &status)),
            Ok(Ok(None)) => Err(self.lost()),
            Ok(Ok(Some(ack))) => Ok(ack.high_water),
        }
    }

    fn lost(&self) -> Error {
        Error::new(
            ErrorKind::Unavailable,
            format!("grpc: PublishStream to {} ended", self.options.url),
        )
    }

    /// Waits for the acknowledgement of the message of sequences `range`.
    async fn await_ack(
        &self,
        session: &mut Session,
        range: Option<(u64, u64)>,
    ) -> Result<(), Error> {
        let Some((first, last)) = range else {
            return Ok(());
        };
        let ack = match tokio::time::timeout(self.options.timeout, session.acks.message()).await {
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "grpc: sequences {first}..={last} not acknowledged within {:?}",
                        self.options.timeout
                    ),
                ));
            }
            Ok(Err(status)) => return Err(status_error("PublishStream", &status)),
            Ok(Ok(None)) => return Err(self.lost()),
            Ok(Ok(Some(ack))) => ack,
        };
        if ack.high_water < last {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "grpc: the receiver acknowledged through {} after sequences {first}..={last}",
                    ack.high_water
                ),
            ));
        }
        Ok(())
    }
}

impl Sink for GrpcSink {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        let Some(stream) = batch.first().map(Record::stream) else {
            return Ok(());
        };
        if !self.is_unary() {
            let session = self.session_of(stream);
            let mut session = session.lock().await;
            if session.is_none() {
                match self.open_session(stream).await? {
                    Some(opened) => *session = Some(opened),
                    None if self.options.protocol == Protocol::Auto => {
                        tracing::info!(
                            url = %self.options.url,
                            "the receiver has no PublishStream; using the unary Publish"
                        );
                        self.unary_only.store(true, Ordering::Relaxed);
                    }
                    None => {
                        return Err(SinkError::new(
                            ErrorKind::Config,
                            format!(
                                "the receiver at {} has no PublishStream (protocol = \"stream\")",
                                self.options.url
                            ),
                        ));
                    }
                }
            }
            if let Some(open) = session.as_mut() {
                let sent = self.send_batch(open, batch).await;
                if sent.is_err() {
                    // The next attempt opens a new call.
                    *session = None;
                }
                return sent.map_err(SinkError::from);
            }
        }
        self.apply_unary(batch).await
    }

    /// The receiver's high-water mark of this sink's sender name for
    /// `stream`, asked with an empty `PublishStream` batch: delivery
    /// resumes after what the receiver has, and a node whose log starts
    /// empty (a standby, a node whose log was lost) numbers or skips past
    /// it instead of sending from 1, which the receiver would take for a
    /// restarted numbering and append again. `None` when the receiver
    /// cannot say: it has no `PublishStream` (the reference's), or it
    /// refuses this writer under the name (the events then go to the dead
    /// letters as they are refused).
    async fn checkpoint(&self, stream: &StreamId) -> Result<Option<u64>, SinkError> {
        if self.is_unary() {
            return Ok(None);
        }
        let session = self.session_of(stream);
        let mut session = session.lock().await;
        if session.is_none() {
            match self.open_session(stream).await? {
                Some(opened) => *session = Some(opened),
                None => return Ok(None),
            }
        }
        let Some(open) = session.as_mut() else {
            return Ok(None);
        };
        match self.ask_mark(open).await {
            // 0: the receiver holds nothing of this sender, which the
            // driver tells from a receiver that lost what it held.
            Ok(mark) => Ok(Some(mark)),
            Err(error) => {
                *session = None;
                if error.kind() == ErrorKind::Rejected {
                    Ok(None)
                } else {
                    Err(SinkError::from(error))
                }
            }
        }
    }

    async fn close(&self) -> Result<(), SinkError> {
        // Ends the calls: the receiver sees the end of each stream.
        let sessions: Vec<StreamSession> = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, session)| session)
            .collect();
        for session in sessions {
            session.lock().await.take();
        }
        Ok(())
    }
}
