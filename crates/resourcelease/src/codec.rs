//! The framework codec of resource-lease events.

use bytes::Bytes;
use omnirelay_replication::{Codec, CodecError, Encoding, Format, WireVersion};

use crate::event::ResourceLeaseReplicationEvent;
use crate::version::LATEST;
use crate::{json, proto};

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
        let bytes = match encoding.format {
            Format::Json => json::encode(event, encoding.version)?,
            Format::Protobuf => proto::encode(event, encoding.version)?,
            other => {
                return Err(CodecError::new(
                    omnirelay_replication::CodecErrorKind::Unsupported,
                    format!("resource-lease events have no {other} form"),
                ));
            }
        };
        Ok(Bytes::from(bytes))
    }

    fn decode(
        &self,
        format: Format,
        bytes: &[u8],
    ) -> Result<ResourceLeaseReplicationEvent, CodecError> {
        Ok(match format {
            Format::Json => json::decode(bytes)?,
            Format::Protobuf => proto::decode(bytes)?,
            other => {
                return Err(CodecError::new(
                    omnirelay_replication::CodecErrorKind::Unsupported,
                    format!("resource-lease events have no {other} form"),
                ));
            }
        })
    }
}
