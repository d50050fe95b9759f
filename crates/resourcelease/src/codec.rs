//! Encoding and decoding by [`Encoding`], and the framework codec.

use bytes::Bytes;
use omnirelay_replication::{
    Assignment, Codec, CodecError, CodecErrorKind, Encoding, Format, WireVersion,
};

use crate::error::{DecodeError, EncodeError};
use crate::event::ResourceLeaseReplicationEvent;
use crate::version::LATEST;
use crate::{json, proto};

/// Encodes `event` in `encoding` (JSON or protobuf, version 1 or 2).
///
/// # Errors
///
/// [`EncodeError`] if the event has no form in that version, or the format
/// or version is not one this crate writes.
pub fn encode(
    event: &ResourceLeaseReplicationEvent,
    encoding: Encoding,
) -> Result<Vec<u8>, EncodeError> {
    match encoding.format {
        Format::Json => json::encode(event, encoding.version),
        Format::Protobuf => proto::encode(event, encoding.version),
        other => Err(EncodeError::UnsupportedFormat(other)),
    }
}

/// Decodes one event of `format`, in any version this crate reads.
///
/// # Errors
///
/// As [`json::decode`] and [`proto::decode`]; [`DecodeError::UnsupportedFormat`]
/// for another format.
pub fn decode(format: Format, bytes: &[u8]) -> Result<ResourceLeaseReplicationEvent, DecodeError> {
    match format {
        Format::Json => json::decode(bytes),
        Format::Protobuf => proto::decode(bytes),
        other => Err(DecodeError::UnsupportedFormat(other)),
    }
}

/// Encodes and decodes [`ResourceLeaseReplicationEvent`]s as JSON and
/// protobuf, versions 1 and 2, for the replication framework.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResourceLeaseCodec;

impl Codec<ResourceLeaseReplicationEvent> for ResourceLeaseCodec {
    fn latest_version(&self) -> WireVersion {
        LATEST
    }

    fn encode(
        &self,
        event: &ResourceLeaseReplicationEvent,
        encoding: Encoding,
    ) -> Result<Bytes, CodecError> {
        Ok(Bytes::from(encode(event, encoding)?))
    }

    fn encode_into(
        &self,
        event: &ResourceLeaseReplicationEvent,
        encoding: Encoding,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        match encoding.format {
            Format::Json => json::encode_into(event, encoding.version, out)?,
            Format::Protobuf => proto::encode_into(event, encoding.version, out)?,
            other => return Err(EncodeError::UnsupportedFormat(other).into()),
        }
        Ok(())
    }

    fn decode(
        &self,
        format: Format,
        bytes: &[u8],
    ) -> Result<ResourceLeaseReplicationEvent, CodecError> {
        Ok(decode(format, bytes)?)
    }

    fn stamp_encoded(
        &self,
        bytes: &[u8],
        encoding: Encoding,
        assignment: &Assignment<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        match encoding.format {
            Format::Protobuf => Ok(proto::stamp_into(bytes, encoding.version, assignment, out)?),
            _ => Err(CodecError::new(
                CodecErrorKind::Unsupported,
                format!("events encoded in {encoding} cannot be stamped without decoding them"),
            )),
        }
    }
}
