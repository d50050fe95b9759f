//! Decoding and encoding errors of the resource-lease schema.

use omnirelay_replication::{CodecError, CodecErrorKind, Format, WireVersion};

use crate::event::ResourceLeaseReplicationEventType;

/// Why a document could not be read as an event.
///
/// [`DecodeError::is_unsupported`] tells a well-formed document of an event
/// type or schema version this reader does not know (quarantine it: it may
/// be readable by a newer node) from a malformed one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is not valid JSON, or not a JSON object.
    #[error("invalid json: {0}")]
    Json(String),
    /// The input is not a valid protobuf message.
    #[error("invalid protobuf: {0}")]
    Protobuf(String),
    /// A field has a value of the wrong shape or range.
    #[error("{path}: {reason}")]
    Field {
        /// The field's path, e.g. `payload.body` or `items[2].enqueuedAt`.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The event type is not one this reader knows.
    #[error("unknown event type {0}")]
    UnknownEventType(String),
    /// The document is of a schema version newer than this reader's.
    #[error("unsupported schema version {0} (this reader knows 1 and 2)")]
    UnsupportedVersion(i64),
    /// Resource-lease events have no form in this format.
    #[error("resource-lease events have no {0} form")]
    UnsupportedFormat(Format),
}

impl DecodeError {
    pub(crate) fn field(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Field {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the path of a field error with its parent's.
    pub(crate) fn within(self, parent: &str) -> Self {
        match self {
            Self::Field { path, reason } => Self::Field {
                path: if path.is_empty() {
                    parent.to_owned()
                } else {
                    format!("{parent}.{path}")
                },
                reason,
            },
            other => other,
        }
    }

    /// Whether the document is well-formed but of an unknown event type or
    /// a future schema version.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            Self::UnknownEventType(_) | Self::UnsupportedVersion(_)
        )
    }
}

impl From<DecodeError> for CodecError {
    fn from(err: DecodeError) -> Self {
        let kind = if err.is_unsupported() || matches!(err, DecodeError::UnsupportedFormat(_)) {
            CodecErrorKind::Unsupported
        } else {
            CodecErrorKind::Malformed
        };
        CodecError::new(kind, err.to_string())
    }
}

/// Why an event could not be written in a schema version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The event type does not exist in the requested version. Skip the
    /// event for that writer and count it.
    #[error("{event_type} events have no form in schema {version} (they need {since})")]
    Unrepresentable {
        /// The event's type.
        event_type: ResourceLeaseReplicationEventType,
        /// The version asked for.
        version: WireVersion,
        /// The first version with the type.
        since: WireVersion,
    },
    /// This writer does not know the requested version.
    #[error("schema {0} is not supported by this writer (it writes v1 and v2)")]
    UnsupportedVersion(WireVersion),
    /// Resource-lease events have no form in this format.
    #[error("resource-lease events have no {0} form")]
    UnsupportedFormat(Format),
}

impl From<EncodeError> for CodecError {
    fn from(err: EncodeError) -> Self {
        let kind = match err {
            EncodeError::Unrepresentable { .. } => CodecErrorKind::Unrepresentable,
            EncodeError::UnsupportedVersion(_) | EncodeError::UnsupportedFormat(_) => {
                CodecErrorKind::Unsupported
            }
        };
        CodecError::new(kind, err.to_string())
    }
}
