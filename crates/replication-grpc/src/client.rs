//! What every client of a node shares: the channel (TLS, deadlines), the
//! request metadata, the mapping of statuses to error kinds, and the
//! version-2 `Subscribe` client.

use std::time::Duration;

use omnirelay_replication::{Encoding, Error, ErrorKind, Format, StreamId};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::receiver::request;
use crate::streaming::Snapshot;
use crate::v2::replication_client::ReplicationClient;
use crate::v2::{PayloadFormat, SnapshotRequest, SubscribeBatch, SubscribeRequest};

/// How often an open connection is checked with an HTTP/2 ping, even
/// while no call is under way: a peer whose host went away without closing
/// its connections (a crash, a power loss, a partition) is otherwise never
/// noticed by a call that only waits, such as a `Subscribe` to an idle
/// node.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered before the connection is dropped
/// (its calls then fail, retryably).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The node's URL, `http://host:port` or `https://host:port`.
    pub url: String,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// A bearer token to send, if the node wants one.
    pub token: Option<String>,
    /// For an `https://` URL: the PEM certificate(s) of the authority that
    /// signed the node's certificate (`None`: the system's roots).
    pub ca_pem: Option<Vec<u8>>,
}

impl Connection {
    /// A plain connection to `url` with a 10-second connect timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: Duration::from_secs(10),
            token: None,
            ca_pem: None,
        }
    }

    /// A channel that connects on first use (a node that is down is then a
    /// retryable failure of that call), and pings the node while connected
    /// ([`KEEPALIVE_INTERVAL`], [`KEEPALIVE_TIMEOUT`]). Call it inside a
    /// Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for an invalid URL or TLS setting.
    pub fn channel(&self) -> Result<Channel, Error> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            let bare = self.url.split("://").last().unwrap_or(&self.url);
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "grpc: url {:?} is not http:// or https:// (a node's address is http://{bare}, or https:// with TLS)",
                    self.url
                ),
            ));
        }
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| Error::new(ErrorKind::Config, format!("grpc: url {:?}: {e}", self.url)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if self.url.starts_with("https://") {
            let tls = match &self.ca_pem {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::new(ErrorKind::Config, format!("grpc: tls: {e}")))?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// The `authorization` value to send, checked once.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for a token that cannot be a header value.
    pub(crate) fn authorization(
        &self,
    ) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, Error> {
        self.token
            .as_ref()
            .map(|token| {
                MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|e| Error::new(ErrorKind::Config, format!("grpc: token: {e}")))
            })
            .transpose()
    }
}

/// Request metadata: who sends, and the token.
#[derive(Clone, Debug)]
pub(crate) struct Credentials {
    sender: Option<MetadataValue<tonic::metadata::Ascii>>,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Credentials {
    pub(crate) fn new(connection: &Connection, sender: Option<&str>) -> Result<Self, Error> {
        let sender = sender
            .map(|name| {
                MetadataValue::try_from(name).map_err(|e| {
                    Error::new(ErrorKind::Config, format!("grpc: sender {name:?}: {e}"))
                })
            })
            .transpose()?;
        Ok(Self {
            sender,
            authorization: connection.authorization()?,
        })
    }

    pub(crate) fn apply(&self, metadata: &mut MetadataMap) {
        if let Some(sender) = &self.sender {
            metadata.insert(request::SENDER, sender.clone());
        }
        if let Some(value) = &self.authorization {
            metadata.insert("authorization", value.clone());
        }
    }
}

/// The error kind of a failed call: what a retry may fix is
/// [`ErrorKind::Unavailable`] (or [`ErrorKind::Timeout`]).
pub(crate) fn status_error(context: &str, status: &tonic::Status) -> Error {
    use tonic::Code;
    let kind = match status.code() {
        Code::DeadlineExceeded => ErrorKind::Timeout,
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal
        // Refused credentials: a token rotated on one side before the
        // other, which heals without a restart once they agree. Retried
        // (and shown as the sink's error) rather than failing the node's
        // start or sending every record to the dead letters.
        | Code::Unauthenticated
        | Code::PermissionDenied => ErrorKind::Unavailable,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => ErrorKind::Rejected,
        _ => ErrorKind::Config,
    };
    // The transport says only "tcp connect error" or "transport error";
    // why (refused, no route, a TLS failure) is in its sources.
    let mut message = format!("grpc: {context}: {:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    Error::new(kind, message)
}

/// The wire name of a payload format.
pub(crate) fn payload_format(format: Format) -> Result<PayloadFormat, Error> {
    match format {
        Format::Protobuf => Ok(PayloadFormat::Protobuf),
        Format::Json => Ok(PayloadFormat::Json),
        other => Err(Error::new(
            ErrorKind::Config,
            format!("grpc: payloads are protobuf or JSON, not {other}"),
        )),
    }
}

/// The format of a payload format's wire name (unspecified is protobuf).
pub(crate) fn format_of(format: PayloadFormat) -> Format {
    match format {
        PayloadFormat::Json => Format::Json,
        PayloadFormat::Unspecified | PayloadFormat::Protobuf => Format::Protobuf,
    }
}

/// A follower of a remote node's stream: `Subscribe` from a sequence, then
/// live. See [`Subscription::open`].
#[derive(Debug)]
pub struct Subscription {
    stream: tonic::Streaming<SubscribeBatch>,
    next: u64,
    writer: Option<String>,
}

impl Subscription {
    /// Subscribes to `stream` of the node at `connection`, from sequence
    /// `from`, with payloads in `encoding`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`] if the node cannot be reached;
    /// [`ErrorKind::Config`] if it refuses (an unknown stream, a missing or
    /// wrong token) or the settings are invalid.
    pub async fn open(
        connection: &Connection,
        stream: &StreamId,
        from: u64,
        encoding: Encoding,
    ) -> Result<Self, Error> {
        Self::start(connection, stream, from.max(1), 0, encoding).await
    }

    /// As [`Subscription::open`], starting `last` records before the
    /// stream's newest (the whole stream when it has fewer).
    ///
    /// # Errors
    ///
    /// As [`Subscription::open`].
    pub async fn open_last(
        connection: &Connection,
        stream: &StreamId,
        last: u64,
        encoding: Encoding,
    ) -> Result<Self, Error> {
        Self::start(connection, stream, 0, last.max(1), encoding).await
    }

    async fn start(
        connection: &Connection,
        stream: &StreamId,
        from: u64,
        last: u64,
        encoding: Encoding,
    ) -> Result<Self, Error> {
        let credentials = Credentials::new(connection, None)?;
        let mut client =
            ReplicationClient::new(connection.channel()?).max_decoding_message_size(usize::MAX);
        let mut request = tonic::Request::new(SubscribeRequest {
            stream: stream.as_str().to_owned(),
            from_sequence: from,
            write_version: u32::from(encoding.version.get()),
            format: payload_format(encoding.format)? as i32,
            last,
        });
        credentials.apply(request.metadata_mut());
        let response = client
            .subscribe(request)
            .await
            .map_err(|status| status_error(&format!("subscribe to {stream}"), &status))?;
        let writer = response
            .metadata()
            .get(request::WRITER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self {
            stream: response.into_inner(),
            // With `last`, the first batch says where it starts.
            next: from,
            writer,
        })
    }

    /// The name of the node whose log this is, as it said (see
    /// [`adopt_node_name`](omnirelay_replication::node::adopt_node_name)); `None` from a node
    /// that does not say.
    pub fn writer(&self) -> Option<&str> {
        self.writer.as_deref()
    }

    /// The next batch of records; `None` once the node ended the stream
    /// (it shut down).
    ///
    /// # Errors
    ///
    /// The call failed (the node went away: [`ErrorKind::Unavailable`]),
    /// or the node sent records out of order ([`ErrorKind::Internal`]).
    pub async fn next(&mut self) -> Result<Option<SubscribeBatch>, Error> {
        let Some(batch) = self
            .stream
            .message()
            .await
            .map_err(|status| status_error("subscription", &status))?
        else {
            return Ok(None);
        };
        for record in &batch.records {
            if record.sequence < self.next {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!(
                        "grpc: subscription went back from {} to {}",
                        self.next, record.sequence
                    ),
                ));
            }
            self.next = record.sequence + 1;
        }
        if let Some(last) = batch.skipped.iter().max() {
            self.next = self.next.max(last + 1);
        }
        Ok(Some(batch))
    }

    /// The next sequence the subscription expects.
    pub fn position(&self) -> u64 {
        self.next
    }
}

/// The newest snapshot of `stream` the node at `connection` keeps (its
/// `Snapshot`); `None` when it keeps none, or does not serve `Snapshot`
/// (an earlier release).
///
/// # Errors
///
/// As [`Subscription::open`]; [`ErrorKind::Internal`] when the node's
/// chunks disagree on the sequence the snapshot is through.
pub async fn fetch_snapshot(
    connection: &Connection,
    stream: &StreamId,
) -> Result<Option<Snapshot>, Error> {
    let credentials = Credentials::new(connection, None)?;
    let mut client =
        ReplicationClient::new(connection.channel()?).max_decoding_message_size(usize::MAX);
    let mut request = tonic::Request::new(SnapshotRequest {
        stream: stream.as_str().to_owned(),
    });
    credentials.apply(request.metadata_mut());
    let context = format!("snapshot of {stream}");
    let mut chunks = match client.snapshot(request).await {
        Ok(response) => response.into_inner(),
        // A node of a release before `Snapshot` keeps none to give.
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::NotFound | tonic::Code::Unimplemented
            ) =>
        {
            return Ok(None);
        }
        Err(status) => return Err(status_error(&context, &status)),
    };
    let mut through = None;
    let mut data = Vec::new();
    while let Some(chunk) = chunks
        .message()
        .await
        .map_err(|status| status_error(&context, &status))?
    {
        if *through.get_or_insert(chunk.through) != chunk.through {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("grpc: {context}: its chunks are through different sequences"),
            ));
        }
        data.extend_from_slice(&chunk.data);
    }
    let through = through.ok_or_else(|| {
        Error::new(
            ErrorKind::Unavailable,
            format!("grpc: {context}: the node sent nothing"),
        )
    })?;
    Ok(Some(Snapshot { through, data }))
}
