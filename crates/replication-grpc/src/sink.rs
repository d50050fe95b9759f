//! A sink that publishes to a receiver with the reference's unary
//! `Publish`.

use std::time::Duration;

use omnirelay_replication::{Error, ErrorKind, Format, Record, Sink, SinkError};
use omnirelay_resourcelease::proto::pb::ResourceLeaseReplicationEventMessage;
use prost::Message as _;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::generated::resource_lease_replicator_grpc_client::ResourceLeaseReplicatorGrpcClient;
use crate::receiver::request;

/// Knobs of a [`GrpcSink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcSinkOptions {
    /// The receiver's URL, `http://host:port`.
    pub url: String,
    /// This sender's name (the receiver keeps one high-water mark per
    /// sender).
    pub sender: String,
    /// How long one call may take.
    pub timeout: Duration,
    /// A bearer token to send, if the receiver wants one.
    pub token: Option<String>,
    /// For an `https://` URL: the PEM certificate(s) of the authority that
    /// signed the receiver's certificate (`None`: the system's roots).
    pub ca_pem: Option<Vec<u8>>,
}

/// Publishes each record (protobuf, the reference's message) to a receiver
/// with one unary `Publish` call, in order; the receiver answers once the
/// event is durable in its log and ignores re-sent events, so delivery
/// retries are harmless.
#[derive(Clone, Debug)]
pub struct GrpcSink {
    client: ResourceLeaseReplicatorGrpcClient<Channel>,
    options: GrpcSinkOptions,
}

fn status_error(sequence: u64, status: &tonic::Status) -> Error {
    use tonic::Code;
    let kind = match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal => ErrorKind::Unavailable,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => ErrorKind::Rejected,
        _ => ErrorKind::Config,
    };
    Error::new(
        kind,
        format!(
            "grpc: publish sequence {sequence}: {:?}: {}",
            status.code(),
            status.message()
        ),
    )
}

impl GrpcSink {
    /// A sink for the receiver at `options.url`; connects lazily (a
    /// receiver that is down is a retryable failure of `apply`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for an invalid URL or sender name.
    pub fn new(options: GrpcSinkOptions) -> Result<Self, Error> {
        MetadataValue::try_from(options.sender.as_str()).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("grpc: sender {:?}: {e}", options.sender),
            )
        })?;
        let mut endpoint = Endpoint::from_shared(options.url.clone())
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("grpc: url {:?}: {e}", options.url),
                )
            })?
            .timeout(options.timeout)
            .connect_timeout(options.timeout);
        if options.url.starts_with("https://") {
            let tls = match &options.ca_pem {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::new(ErrorKind::Config, format!("grpc: tls: {e}")))?;
        }
        Ok(Self {
            client: ResourceLeaseReplicatorGrpcClient::new(endpoint.connect_lazy()),
            options,
        })
    }

    async fn publish(&self, record: &Record<'_>) -> Result<(), Error> {
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
        let metadata = request.metadata_mut();
        if let Ok(sender) = MetadataValue::try_from(self.options.sender.as_str()) {
            metadata.insert(request::SENDER, sender);
        }
        if let Some(token) = &self.options.token {
            let value = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|e| Error::new(ErrorKind::Config, format!("grpc: token: {e}")))?;
            metadata.insert("authorization", value);
        }
        self.client
            .clone()
            .publish(request)
            .await
            .map(|_| ())
            .map_err(|status| status_error(record.sequence(), &status))
    }
}

impl Sink for GrpcSink {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        if let Some(record) = batch
            .iter()
            .find(|r| r.encoding().format != Format::Protobuf)
        {
            return Err(SinkError::new(
                ErrorKind::Config,
                format!(
                    "the grpc sink sends protobuf messages, not {}",
                    record.encoding()
                ),
            ));
        }
        let mut through = None;
        for record in batch {
            if let Err(error) = self.publish(record).await {
                return Err(SinkError::from(error).applied_through(through));
            }
            through = Some(record.sequence());
        }
        Ok(())
    }
}
