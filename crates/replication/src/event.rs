//! What the framework needs to know about an event, and how it is encoded.
//!
//! The framework is generic over the event type. A schema crate (for the
//! resource-lease events, `omnirelay-resourcelease`) implements
//! [`ReplicationEvent`] so that replicators can stamp the sequence, timestamp
//! and stream, and [`Codec`] so that each sink receives bytes in the
//! [`Encoding`] it writes.

use std::fmt;

use bytes::Bytes;

use crate::error::{Error, ErrorKind};
use crate::stream::StreamId;
use crate::time::Timestamp;

/// A schema version of an event's wire and storage form. Version 1 is the
/// reference (.NET OmniRelay) format.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WireVersion(u16);

impl WireVersion {
    /// The reference format.
    pub const V1: WireVersion = WireVersion(1);
    /// The first format with schema versioning.
    pub const V2: WireVersion = WireVersion(2);

    /// A version number, or `None` for 0.
    pub const fn new(version: u16) -> Option<Self> {
        if version == 0 {
            None
        } else {
            Some(Self(version))
        }
    }

    /// The version number.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for WireVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl fmt::Debug for WireVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A serialization format.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[non_exhaustive]
pub enum Format {
    /// UTF-8 JSON, one document per event.
    Json,
    /// Protocol Buffers, one message per event.
    Protobuf,
}

impl Format {
    /// `json` or `protobuf`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Protobuf => "protobuf",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A format at a schema version: what a sink writes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Encoding {
    /// The serialization format.
    pub format: Format,
    /// The schema version.
    pub version: WireVersion,
}

impl Encoding {
    /// The reference JSON format.
    pub const JSON_V1: Encoding = Encoding::new(Format::Json, WireVersion::V1);
    /// The reference protobuf format.
    pub const PROTOBUF_V1: Encoding = Encoding::new(Format::Protobuf, WireVersion::V1);

    /// `format` at `version`.
    pub const fn new(format: Format, version: WireVersion) -> Self {
        Self { format, version }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.format, self.version)
    }
}

/// An event type as the framework sees it: a stable number and name, for
/// record headers, metrics and logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct EventKind {
    /// The wire number of the type.
    pub code: i32,
    /// The type's name, e.g. `LeaseGranted`.
    pub name: &'static str,
}

/// What a replicator assigns to an event it accepts.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Assignment<'a> {
    /// The stream the event belongs to.
    pub stream: &'a StreamId,
    /// The event's gap-free position in the stream, from 1.
    pub sequence: u64,
    /// When the replicator accepted the event.
    pub timestamp: Timestamp,
}

/// An event the framework can replicate.
///
/// The framework never looks inside an event: it reads the few header fields
/// below and stamps what a replicator assigns.
pub trait ReplicationEvent: Clone + Send + Sync + 'static {
    /// The event's type.
    fn kind(&self) -> EventKind;

    /// The peer that caused the event, if any.
    fn peer(&self) -> Option<&str>;

    /// The sequence number the event carries (0 before a replicator
    /// assigned one, or if the schema cannot hold it).
    fn sequence(&self) -> u64;

    /// The event's timestamp.
    fn timestamp(&self) -> Timestamp;

    /// Overwrites the sequence number, timestamp and stream with what a
    /// replicator assigned. Whatever the caller set is ignored.
    fn assign(&mut self, assignment: &Assignment<'_>);

    /// Labels the event with the shard it is published to.
    fn set_shard(&mut self, shard: &StreamId);
}

/// How a codec failed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum CodecErrorKind {
    /// The bytes are not a valid document. Readers quarantine the input.
    Malformed,
    /// A well-formed document of an event type or schema version this
    /// reader does not know. Readers quarantine the input: never a crash,
    /// never a silent drop.
    Unsupported,
    /// The event has no form in the requested version (for example an event
    /// type that version 1 does not have). Writers skip the event for that
    /// sink and count it.
    Unrepresentable,
}

/// A codec failure: its kind and a lowercase message.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    kind: CodecErrorKind,
    message: String,
}

impl CodecError {
    /// A failure of `kind`.
    pub fn new(kind: CodecErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> CodecErrorKind {
        self.kind
    }

    /// Whether the input should be quarantined (dead-lettered and counted)
    /// rather than dropped: true for every read failure.
    pub fn is_quarantine(&self) -> bool {
        matches!(
            self.kind,
            CodecErrorKind::Malformed | CodecErrorKind::Unsupported
        )
    }
}

impl From<CodecError> for Error {
    fn from(err: CodecError) -> Self {
        let kind = match err.kind {
            CodecErrorKind::Malformed => ErrorKind::Rejected,
            CodecErrorKind::Unsupported | CodecErrorKind::Unrepresentable => ErrorKind::Unsupported,
        };
        Error::new(kind, err.message)
    }
}

/// Encodes and decodes one event type in every [`Encoding`] it supports.
pub trait Codec<E>: Send + Sync + 'static {
    /// The newest schema version this codec writes: the full-fidelity form.
    fn latest_version(&self) -> WireVersion;

    /// Encodes `event` in `encoding`.
    ///
    /// # Errors
    ///
    /// [`CodecErrorKind::Unrepresentable`] when the event has no form in that
    /// version, [`CodecErrorKind::Unsupported`] for an encoding the codec
    /// does not write.
    fn encode(&self, event: &E, encoding: Encoding) -> Result<Bytes, CodecError>;

    /// Appends `event`'s encoding to `out`; on error `out` may hold part
    /// of it (the caller truncates). Batches are encoded with this into one
    /// buffer per batch and encoding. The default copies what
    /// [`Codec::encode`] returns; a codec that writes into a buffer should
    /// write into `out` directly.
    ///
    /// # Errors
    ///
    /// As [`Codec::encode`].
    fn encode_into(
        &self,
        event: &E,
        encoding: Encoding,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        out.extend_from_slice(&self.encode(event, encoding)?);
        Ok(())
    }

    /// Decodes one event of `format`, in any version the codec reads.
    ///
    /// # Errors
    ///
    /// [`CodecErrorKind::Malformed`] for invalid input and
    /// [`CodecErrorKind::Unsupported`] for an unknown event type or a future
    /// schema version. Never panics, whatever the bytes.
    fn decode(&self, format: Format, bytes: &[u8]) -> Result<E, CodecError>;

    /// Appends to `out` the event encoded as `bytes` in `encoding`, stamped
    /// with `assignment` as [`ReplicationEvent::assign`] would stamp it,
    /// without decoding it: what lets a node append events it received
    /// already encoded (see
    /// [`DurableReplicator::submit_encoded`](crate::DurableReplicator::submit_encoded)).
    /// `bytes` must be an event the codec decodes. The default cannot;
    /// protobuf, whose later fields override earlier ones, can by appending
    /// the stamped fields.
    ///
    /// # Errors
    ///
    /// [`CodecErrorKind::Unsupported`] when the codec cannot stamp
    /// `encoding` this way; `out` may then hold part of the event (the
    /// caller truncates).
    fn stamp_encoded(
        &self,
        bytes: &[u8],
        encoding: Encoding,
        assignment: &Assignment<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let _ = (bytes, assignment, out);
        Err(CodecError::new(
            CodecErrorKind::Unsupported,
            format!("this codec cannot stamp events encoded in {encoding}"),
        ))
    }
}
