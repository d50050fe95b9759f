//! The NATS JetStream sink.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::{Publish, PublishErrorKind};
use async_nats::jetstream::stream::{
    Config as StreamConfig, LastRawMessageErrorKind, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, Context};
use async_nats::{ConnectOptions, HeaderMap, HeaderName};
use bytes::Bytes;
use futures::StreamExt as _;
use omnirelay_replication::{
    Encoding, Error, ErrorKind, Health, HealthCell, Record, Sink, SinkError, StreamId,
};

use crate::auth::server_addresses;
use crate::diagnose::{ConnectProblem, TlsTrust};
use crate::subject::{
    DEFAULT_STREAM, DEFAULT_SUBJECT, header, subject_filter, subject_for, validate_stream_name,
    validate_subject_template,
};

/// JetStream reads in flight together when a sink reads back the last
/// messages of a stream (the hole check of its mark).
const HOLE_CHECK_READS_IN_FLIGHT: usize = 32;

/// How the JetStream stream is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk.
    #[default]
    File,
    /// In memory.
    Memory,
}

/// When JetStream removes messages of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Retention {
    /// At the limits (age, bytes) only.
    #[default]
    Limits,
    /// Once every consumer has acknowledged them.
    Interest,
    /// Once one consumer has acknowledged them.
    WorkQueue,
}

/// The JetStream stream the sink creates when it does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSettings {
    /// Replicas in a cluster (1, 3 or 5).
    pub replicas: usize,
    /// File or memory.
    pub storage: Storage,
    /// When messages are removed.
    pub retention: Retention,
    /// Messages older than this are removed (zero: kept).
    pub max_age: Duration,
    /// The oldest messages are removed past this size (`None`: no limit).
    pub max_bytes: Option<u64>,
    /// How long JetStream remembers message ids to drop duplicates.
    pub duplicate_window: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            storage: Storage::File,
            retention: Retention::Limits,
            max_age: Duration::ZERO,
            max_bytes: None,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// Knobs of a [`NatsSink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsSinkOptions {
    /// The JetStream stream.
    pub stream: String,
    /// The subject of each replication stream; its last token is
    /// `{stream}`.
    pub subject: String,
    /// Create the JetStream stream with these settings if it does not
    /// exist (`None`: it must exist).
    pub create: Option<StreamSettings>,
    /// Publishes awaiting their acknowledgement at most.
    pub max_outstanding_acks: usize,
    /// How long a publish waits for its acknowledgement.
    pub ack_timeout: Duration,
    /// Whom the connect options trust for TLS. When known, a connection
    /// that fails with nothing but `IO error` is explained: the sink
    /// repeats the handshake with the same trust and adds its reason (an
    /// untrusted certificate, say) to its errors. `None` (the default):
    /// only the server's reachability is checked.
    pub tls_trust: Option<TlsTrust>,
    /// Who writes the log this sink publishes, in each message's
    /// `Omnirelay-Writer` header: the node's name
    /// ([`node_name`](omnirelay_replication::node::node_name), which a
    /// sink built from configuration uses), so that a standby that took
    /// its primary's name is the same writer on the subject. `None`: a
    /// random id, one per sink and process.
    pub writer: Option<String>,
}

impl NatsSinkOptions {
    /// The default stream and subject, created if missing, 256
    /// acknowledgements outstanding, 10 s to acknowledge.
    pub fn new() -> Self {
        Self {
            stream: DEFAULT_STREAM.to_owned(),
            subject: DEFAULT_SUBJECT.to_owned(),
            create: Some(StreamSettings::default()),
            max_outstanding_acks: 256,
            ack_timeout: Duration::from_secs(10),
            tls_trust: None,
            writer: None,
        }
    }

    /// Checks the names and limits.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] naming the problem.
    pub fn validate(&self) -> Result<(), Error> {
        validate_stream_name(&self.stream)?;
        validate_subject_template(&self.subject)?;
        if self.max_outstanding_acks == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "max_outstanding_acks must be at least 1",
            ));
        }
        if let Some(create) = &self.create
            && !matches!(create.replicas, 1 | 3 | 5)
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!("replicas must be 1, 3 or 5 (is {})", create.replicas),
            ));
        }
        if let Some(writer) = &self.writer
            && !omnirelay_replication::node::is_node_name(writer)
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!("writer {writer:?} is not a node name (printable ASCII)"),
            ));
        }
        Ok(())
    }
}

impl Default for NatsSinkOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Publishes each record to a JetStream stream, one subject per
/// replication stream, with `Nats-Msg-Id: <stream>:<sequence>` so that
/// JetStream drops a retried publish inside its duplicate window, and a
/// high-water mark (the sequence of the last message on the subject, read
/// on first use and after a failure) so that a re-delivery older than the
/// window is skipped too. Publishes are asynchronous with at most
/// `max_outstanding_acks` awaiting acknowledgement; a duplicate
/// acknowledgement counts as success.
#[derive(Clone, Debug)]
pub struct NatsSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: NatsSinkOptions,
    client: async_nats::Client,
    context: Context,
    /// Whether the JetStream stream is known to be there.
    ready: tokio::sync::Mutex<bool>,
    marks: tokio::sync::Mutex<HashMap<StreamId, u64>>,
    /// After a failure, what was acknowledged before it, until the mark
    /// is read from the stream again.
    acked: tokio::sync::Mutex<HashMap<StreamId, u64>>,
    duplicates: AtomicU64,
    /// This sink's [`header::WRITER`].
    writer: String,
    health: HealthCell,
    /// Why the client is not connected, as its last attempt said (and a
    /// probe found): a server that refuses the credentials otherwise shows
    /// only as timed-out requests.
    connecting: Arc<ConnectProblem>,
}

impl Inner {
    /// `err`, with why the client cannot connect when that is known.
    fn explained(&self, err: SinkError) -> SinkError {
        if err.kind() != ErrorKind::Unavailable {
            return err;
        }
        let Some(problem) = self.connecting.describe() else {
            return err;
        };
        let through = err.applied_through_sequence();
        let error = err.into_error();
        let mut explained = Error::new(
            error.kind(),
            format!("{} (the client cannot connect: {problem})", error.message()),
        );
        if let Some(after) = error.retry_after() {
            explained = explained.with_retry_after(after);
        }
        SinkError::from(explained).applied_through(through)
    }
}

fn nats_error(kind: ErrorKind, context: &str, err: impl std::fmt::Display) -> Error {
    Error::new(kind, format!("nats: {context}: {err}"))
}

impl NatsSink {
    /// Connects to `servers` (the connection is made, and kept, in the
    /// background: a server that is down now is a retryable failure of
    /// `apply`, not of start-up).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for invalid options or server addresses.
    pub async fn connect(servers: &[String], options: NatsSinkOptions) -> Result<Self, Error> {
        Self::connect_with(servers, ConnectOptions::new(), options).await
    }

    /// As [`NatsSink::connect`], with the client's connect options (for
    /// credentials, TLS, names). The sink sets their event callback: it
    /// keeps why the client cannot connect (a server refusing the
    /// credentials, say) and adds it to the errors it reports.
    ///
    /// # Errors
    ///
    /// As [`NatsSink::connect`].
    pub async fn connect_with(
        servers: &[String],
        connect: ConnectOptions,
        options: NatsSinkOptions,
    ) -> Result<Self, Error> {
        options.validate()?;
        if servers.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "nats: no server to connect to",
            ));
        }
        let addresses = server_addresses(servers, "nats")?;
        let connecting = Arc::new(ConnectProblem::default());
        let recorder = connecting.clone();
        let probed: Arc<[async_nats::ServerAddr]> = addresses.clone().into();
        let trust = options.tls_trust.clone();
        let client = connect
            .event_callback(move |event| {
                // Only what stops it connecting: a slow consumer or a
                // permission refused while connected is no reason.
                match event {
                    async_nats::Event::Connected => recorder.connected(),
                    // How the client reports a connect attempt the server
                    // refused for its credentials (or it could not sign).
                    async_nats::Event::ClientError(
                        ref e @ async_nats::ClientError::Other(ref kind),
                    ) if [
                        async_nats::ConnectErrorKind::AuthorizationViolation,
                        async_nats::ConnectErrorKind::Authentication,
                    ]
                    .iter()
                    .any(|refused| *kind == refused.to_string()) =>
                    {
                        recorder.refused(e.to_string());
                    }
                    async_nats::Event::ClientError(e) => {
                        recorder.failed(e.to_string(), &probed, trust.as_ref());
                    }
                    async_nats::Event::ServerError(
                        e @ async_nats::ServerError::AuthorizationViolation,
                    ) => recorder.refused(e.to_string()),
                    _ => {}
                }
                async {}
            })
            .retry_on_initial_connect()
            .connect(addresses)
            .await
            .map_err(|e| nats_error(ErrorKind::Unavailable, "connect", e))?;
        let mut context = jetstream::new(client.clone());
        context.set_timeout(options.ack_timeout);
        let writer = options
            .writer
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        Ok(Self {
            inner: Arc::new(Inner {
                options,
                client,
                context,
                ready: tokio::sync::Mutex::new(false),
                marks: tokio::sync::Mutex::default(),
                acked: tokio::sync::Mutex::default(),
                duplicates: AtomicU64::new(0),
                writer,
                health: HealthCell::default(),
                connecting,
            }),
        })
    }

    /// The options.
    pub fn options(&self) -> &NatsSinkOptions {
        &self.inner.options
    }

    /// The id this sink puts in each message's `Omnirelay-Writer` header:
    /// [`NatsSinkOptions::writer`], or a random one per sink and process.
    pub fn writer(&self) -> &str {
        &self.inner.writer
    }

    /// Acknowledgements JetStream marked as duplicates (publishes it had
    /// already stored), counted as success.
    pub fn duplicates(&self) -> u64 {
        self.inner.duplicates.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// Makes sure the JetStream stream exists (creating it if allowed) and
    /// covers the sink's subjects.
    async fn ensure_stream(&self) -> Result<jetstream::stream::Stream, Error> {
        let options = &self.options;
        let filter = subject_filter(&options.subject);
        let mut stream = match &options.create {
            Some(create) => {
                let config = StreamConfig {
                    name: options.stream.clone(),
                    subjects: vec![filter.clone()],
                    num_replicas: create.replicas,
                    storage: match create.storage {
                        Storage::File => StorageType::File,
                        Storage::Memory => StorageType::Memory,
                    },
                    retention: match create.retention {
                        Retention::Limits => RetentionPolicy::Limits,
                        Retention::Interest => RetentionPolicy::Interest,
                        Retention::WorkQueue => RetentionPolicy::WorkQueue,
                    },
                    max_age: create.max_age,
                    max_bytes: create
                        .max_bytes
                        .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
                    duplicate_window: create.duplicate_window,
                    ..StreamConfig::default()
                };
                self.context
                    .get_or_create_stream(config)
                    .await
                    .map_err(|e| nats_error(ErrorKind::Unavailable, "create the stream", e))?
            }
            None => self
                .context
                .get_stream(&options.stream)
                .await
                .map_err(|e| nats_error(ErrorKind::Unavailable, "find the stream", e))?,
        };
        let info = stream
            .info()
            .await
            .map_err(|e| nats_error(ErrorKind::Unavailable, "read the stream", e))?;
        let covered = info.config.subjects.iter().any(|s| {
            *s == filter || s == ">" || (s.ends_with(".>") && filter.starts_with(&s[..s.len() - 1]))
        });
        if !covered {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "nats: stream {} does not take the subjects {filter} (it takes {:?})",
                    options.stream, info.config.subjects
                ),
            ));
        }
        Ok(stream)
    }

    async fn stream(&self) -> Result<jetstream::stream::Stream, Error> {
        let mut ready = self.ready.lock().await;
        let stream = if *ready {
            self.context
                .get_stream(&self.options.stream)
                .await
                .map_err(|e| nats_error(ErrorKind::Unavailable, "find the stream", e))?
        } else {
            self.ensure_stream().await?
        };
        *ready = true;
        Ok(stream)
    }

    /// What `stream`'s subject holds without a hole: the sequence of its
    /// last message (0: none), or the one before the first message a
    /// recent message names as its predecessor (`Omnirelay-Previous-Sequence`)
    /// that is not there — a publish lost in flight while later ones
    /// landed, by a sink that stopped before it could publish it again.
    /// After a failure, `acked` is what was acknowledged before it: the
    /// mark is never below it, and stays it when the look-back did not
    /// reach back to it.
    async fn read_mark(&self, stream: &StreamId, acked: Option<u64>) -> Result<u64, Error> {
        let js_stream = self.stream().await?;
        let subject = subject_for(&self.options.subject, stream.as_str());
        match js_stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => {
                let last = header_u64(&message.headers, header::SEQUENCE).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Corrupt,
                        format!(
                            "nats: the last message on {subject} has no {} header",
                            header::SEQUENCE
                        ),
                    )
                })?;
                // Read again after a failure, the subject's newest message
                // is past what this sink had acknowledged: one of its own
                // that landed unacknowledged, or another node's. Taking
                // another node's for ours would skip our records.
                let writer = message.headers.get(header::WRITER).map(|v| v.as_str());
                if let Some(acked) = acked
                    && last > acked
                    && writer != Some(self.writer.as_str())
                {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "nats: the newest message on {subject} (sequence {last}) was published by another writer ({}) since this sink's last ({acked}): another node publishes the same stream id to this subject; give each node its own stream",
                            writer.unwrap_or("unnamed")
                        ),
                    ));
                }
                let (hole, lowest) = self
                    .first_hole(&js_stream, &subject, message.sequence)
                    .await?;
                if let Some(hole) = hole {
                    tracing::warn!(
                        %stream, hole, last,
                        "nats: sequence {hole} is missing before the stream's last message {last}; publishing again from it"
                    );
                }
                let mark = hole.map_or(last, |hole| hole - 1);
                Ok(match acked {
                    Some(acked) if lowest > acked.saturating_add(1) => acked,
                    Some(acked) => mark.max(acked),
                    None => mark,
                })
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(acked.unwrap_or(0)),
            Err(e) => Err(nats_error(
                ErrorKind::Unavailable,
                &format!("read the last message on {subject}"),
                e,
            )),
        }
    }

    /// The lowest sequence that a message of `subject` among the JetStream
    /// messages up to `at` (its last one) names as its predecessor without
    /// it being there, looking back as far as publishes can be in flight
    /// together; and the lowest sequence looked at.
    async fn first_hole(
        &self,
        js_stream: &jetstream::stream::Stream,
        subject: &str,
        at: u64,
    ) -> Result<(Option<u64>, u64), Error> {
        let window = 2 * u64::try_from(self.options.max_outstanding_acks).unwrap_or(u64::MAX);
        let from = at.saturating_sub(window).max(1);
        let mut present = std::collections::HashSet::new();
        let mut named = Vec::new();
        let mut lowest = u64::MAX;
        // Requests in flight together: one round trip per this many
        // messages instead of per message (a bus across a WAN).
        let mut messages = futures::stream::iter(from..=at)
            .map(|js_sequence| js_stream.get_raw_message(js_sequence))
            .buffered(HOLE_CHECK_READS_IN_FLIGHT);
        while let Some(read) = messages.next().await {
            let message = match read {
                Ok(message) => message,
                // Deleted, or removed by the stream's limits.
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
                Err(e) => {
                    return Err(nats_error(
                        ErrorKind::Unavailable,
                        &format!("read back the last messages on {subject}"),
                        e,
                    ));
                }
            };
            if message.subject.as_str() != subject {
                continue;
            }
            let Some(sequence) = header_u64(&message.headers, header::SEQUENCE) else {
                continue;
            };
            present.insert(sequence);
            lowest = lowest.min(sequence);
            if let Some(previous) = header_u64(&message.headers, header::PREVIOUS_SEQUENCE)
                && previous > 0
            {
                named.push(previous);
            }
        }
        // A predecessor older than what was looked at cannot be judged.
        let hole = named
            .into_iter()
            .filter(|previous| *previous >= lowest && !present.contains(previous))
            .min();
        Ok((hole, lowest))
    }

    /// Waits, at most the acknowledgement timeout, for the client to be
    /// connected, so that a request is not queued only to time out: a
    /// client the server refuses (its credentials) fails at once, one
    /// still not connected fails after the timeout; both retryable, with
    /// why added by [`Inner::explained`].
    async fn connection(&self) -> Result<(), Error> {
        const LOOK_EVERY: Duration = Duration::from_millis(25);
        let deadline = tokio::time::Instant::now() + self.options.ack_timeout;
        loop {
            if self.client.connection_state() == async_nats::connection::State::Connected {
                return Ok(());
            }
            if self.connecting.is_refused() {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "nats: the server refuses the client",
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "nats: not connected within {} ms",
                        self.options.ack_timeout.as_millis()
                    ),
                ));
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    async fn mark(&self, stream: &StreamId) -> Result<u64, Error> {
        let mut marks = self.marks.lock().await;
        if let Some(mark) = marks.get(stream) {
            return Ok(*mark);
        }
        self.connection().await?;
        let acked = self.acked.lock().await.get(stream).copied();
        let mark = self.read_mark(stream, acked).await?;
        marks.insert(stream.clone(), mark);
        self.acked.lock().await.remove(stream);
        Ok(mark)
    }

    /// Publishes `records` in order with at most `max_outstanding_acks`
    /// unacknowledged; the last acknowledged sequence (a prefix of the
    /// batch) and the error that stopped the rest.
    async fn publish(
        &self,
        stream: &StreamId,
        records: &[Outgoing],
    ) -> (Option<u64>, Option<Error>) {
        let subject =
            async_nats::Subject::from(subject_for(&self.options.subject, stream.as_str()));
        let max_payload = self.client.server_info().max_payload;
        let mut pending = VecDeque::with_capacity(self.options.max_outstanding_acks);
        let mut done = None;
        let mut error = None;
        'records: for (index, record) in records.iter().enumerate() {
            let (sequence, payload) = (&record.sequence, &record.payload);
            if max_payload > 0 && payload.len() > max_payload {
                error = Some(Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "nats: sequence {sequence} is {} bytes, over the server's limit of {max_payload}",
                        payload.len()
                    ),
                ));
                break;
            }
            while pending.len() >= self.options.max_outstanding_acks {
                let Some((at, ack)) = pending.pop_front() else {
                    break;
                };
                let ack: jetstream::context::PublishAckFuture = ack;
                match self.settle(&subject, ack.await, &records[at]).await {
                    Ok(seq) => done = Some(seq),
                    Err(e) => {
                        error = Some(e);
                        // What was sent after it is not part of the
                        // acknowledged prefix, whatever its own answer:
                        // counting it would report the failed one applied.
                        pending.clear();
                        break 'records;
                    }
                }
            }
            let publish = Publish::build()
                .payload(payload.clone())
                .headers(record.headers(stream, &self.writer));
            match self.context.send_publish(subject.clone(), publish).await {
                Ok(ack) => pending.push_back((index, ack)),
                Err(e) => {
                    error = Some(publish_error(*sequence, &e));
                    break;
                }
            }
        }
        // Settle what was sent before the stop (or the end), in order,
        // until the first failure: the prefix before it is what counts.
        while let Some((at, ack)) = pending.pop_front() {
            match self.settle(&subject, ack.await, &records[at]).await {
                Ok(seq) => done = Some(seq),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        (done, error)
    }
}

impl Inner {
    /// The sequence of `record` once its publish is acknowledged. A
    /// duplicate acknowledgement is success when the message JetStream
    /// holds under that id is this one (a retry); when it holds another
    /// message in the same format and version, or one in another from
    /// another writer (another node publishing the same stream id to the
    /// subject), dropping ours as a retry would lose it: a non-retryable
    /// [`ErrorKind::Config`] instead.
    async fn settle(
        &self,
        subject: &str,
        ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
        record: &Outgoing,
    ) -> Result<u64, Error> {
        let (sequence, payload) = (&record.sequence, &record.payload);
        let ack = ack.map_err(|e| publish_error(*sequence, &e))?;
        if !ack.duplicate {
            return Ok(*sequence);
        }
        self.duplicates.fetch_add(1, Ordering::Relaxed);
        let stored = match self
            .context
            .get_stream(&self.options.stream)
            .await
            .map_err(|e| nats_error(ErrorKind::Unavailable, "find the stream", e))?
            .get_raw_message(ack.sequence)
            .await
        {
            Ok(stored) => stored,
            // Removed since (the stream's limits): nothing to compare with.
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Ok(*sequence);
            }
            Err(e) => {
                return Err(nats_error(
                    ErrorKind::Unavailable,
                    &format!("read the message stored as sequence {sequence}"),
                    e,
                ));
            }
        };
        let stored_header = |name| stored.headers.get(name).map(|v| v.as_str());
        let same_form = stored_header(header::FORMAT) == Some(record.encoding.format.as_str())
            && stored_header(header::SCHEMA_VERSION)
                == Some(record.encoding.version.get().to_string().as_str());
        // In another form (a schema version or format rolled over) the
        // bytes differ anyway: the writer tells this log's retry from
        // another node's event. A message without one (a release before
        // the header) is taken for a retry.
        let writer = stored.headers.get(header::WRITER).map(|v| v.as_str());
        let another = if same_form {
            stored.payload != *payload
        } else {
            writer.is_some_and(|writer| writer != self.writer)
        };
        if another {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "nats: {subject} already holds another message as sequence {sequence} (JetStream message {}, writer {}): another node publishes the same stream id to this subject; give each node its own stream",
                    ack.sequence,
                    writer.unwrap_or("unnamed")
                ),
            ));
        }
        Ok(*sequence)
    }
}

fn publish_error(sequence: u64, err: &jetstream::context::PublishError) -> Error {
    use async_nats::jetstream::ErrorCode;
    // The stream refusing this message for its size refuses it again.
    let too_large = std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|e| {
            matches!(
                e.error_code(),
                ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                    | ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM
            )
        });
    let kind = match err.kind() {
        _ if too_large => ErrorKind::Rejected,
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::Other => ErrorKind::Unavailable,
        _ => ErrorKind::Rejected,
    };
    nats_error(kind, &format!("publish sequence {sequence}"), err)
}

/// A header's value as a number.
fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name).and_then(|v| v.as_str().parse().ok())
}

/// One record to publish: what its message is made of.
struct Outgoing {
    sequence: u64,
    /// The sequence of the record published before it on the subject.
    previous: u64,
    payload: Bytes,
    encoding: Encoding,
    kind: &'static str,
}

impl Outgoing {
    /// The message's headers (built when it is sent, and moved into it).
    fn headers(&self, stream: &StreamId, writer: &str) -> HeaderMap {
        const WRITER: HeaderName = HeaderName::from_static(header::WRITER);
        const MSG_ID: HeaderName = HeaderName::from_static(header::MSG_ID);
        const STREAM: HeaderName = HeaderName::from_static(header::STREAM);
        const SEQUENCE: HeaderName = HeaderName::from_static(header::SEQUENCE);
        const SCHEMA_VERSION: HeaderName = HeaderName::from_static(header::SCHEMA_VERSION);
        const FORMAT: HeaderName = HeaderName::from_static(header::FORMAT);
        const EVENT_TYPE: HeaderName = HeaderName::from_static(header::EVENT_TYPE);
        const PREVIOUS_SEQUENCE: HeaderName = HeaderName::from_static(header::PREVIOUS_SEQUENCE);
        let stream = stream.as_str();
        let sequence = self.sequence.to_string();
        let mut headers = HeaderMap::new();
        headers.insert(WRITER, writer);
        headers.insert(MSG_ID, format!("{stream}:{sequence}"));
        headers.insert(STREAM, stream);
        headers.insert(SEQUENCE, sequence);
        headers.insert(SCHEMA_VERSION, self.encoding.version.get().to_string());
        headers.insert(FORMAT, self.encoding.format.as_str());
        headers.insert(EVENT_TYPE, self.kind);
        headers.insert(PREVIOUS_SEQUENCE, self.previous.to_string());
        headers
    }
}

impl Sink for NatsSink {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let stream = first.stream().clone();
        let inner = &self.inner;
        let result = async {
            inner.connection().await?;
            let mark = inner.mark(&stream).await?;
            // Each message names the one before it: the mark (what the
            // stream holds up to), then the batch's records in order.
            let mut previous = mark;
            let records: Vec<Outgoing> = batch
                .iter()
                .filter(|r| r.sequence() > mark)
                .map(|r| Outgoing {
                    sequence: r.sequence(),
                    previous: std::mem::replace(&mut previous, r.sequence()),
                    payload: r.shared_bytes(),
                    encoding: r.encoding(),
                    kind: r.header().kind.name,
                })
                .collect();
            if records.is_empty() {
                return Ok(());
            }
            let (done, error) = inner.publish(&stream, &records).await;
            if let Some(done) = done {
                inner.marks.lock().await.insert(stream.clone(), done);
            }
            match error {
                None => Ok(()),
                Some(e) => Err(SinkError::from(e).applied_through(done)),
            }
        }
        .await
        .map_err(|e| inner.explained(e));
        self.inner.health.record(&result);
        if result.as_ref().is_err_and(|e| e.error().is_retryable()) {
            // Publishes may have landed without their acknowledgement, in
            // any order (one lost with a broken connection while a later
            // one was stored): read the mark from the stream again before
            // the next batch, so that what landed is not sent again (it
            // may be older than the duplicate window by then) and a hole
            // is (the read finds it, and never goes below what was
            // acknowledged).
            let mut marks = self.inner.marks.lock().await;
            if let Some(acked) = marks.remove(&stream) {
                self.inner.acked.lock().await.insert(stream.clone(), acked);
            }
            drop(marks);
            *self.inner.ready.lock().await = false;
        }
        result
    }

    async fn checkpoint(&self, stream: &StreamId) -> Result<Option<u64>, SinkError> {
        let mark = self
            .inner
            .mark(stream)
            .await
            .map_err(|e| self.inner.explained(e.into()))?;
        Ok((mark > 0).then_some(mark))
    }

    fn health(&self) -> Health {
        self.inner.health.get()
    }

    async fn close(&self) -> Result<(), SinkError> {
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| SinkError::from(nats_error(ErrorKind::Unavailable, "flush", e)))
    }
}
