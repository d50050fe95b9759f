//! The protobuf form of events: the reference contract
//! (`omnirelay.dispatcher.replication`), plus the version-2 fields under new
//! numbers.
//!
//! Conversions follow the reference's `ResourceLeaseReplicationGrpcMapper`:
//! `event_type` as its number, timestamps in the seven-digit round-trip
//! form, lease ids as .NET `Guid.ToByteArray()` bytes, absent strings as
//! `""`. Map fields are written in ordinal key order, so the encoding of an
//! event is canonical.

use std::cell::Cell;

use omnirelay_replication::{Assignment, Timestamp, TimestampText, WireVersion};
use prost::Message as _;
use uuid::Uuid;

use crate::error::{DecodeError, EncodeError};
use crate::event::{
    Metadata, ResourceLeaseErrorInfo, ResourceLeaseItemPayload, ResourceLeaseOwnershipHandle,
    ResourceLeasePendingItem, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType,
};
use crate::version::{LATEST, V2, check_writable};

mod direct;
mod scan;

pub use scan::{Scanned, metadata, scan};

/// The generated messages of `resource_lease_replication.proto`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    include!(concat!(
        env!("OUT_DIR"),
        "/omnirelay.dispatcher.replication.rs"
    ));
}

/// The full gRPC method path of the reference's unary publish.
pub const PUBLISH_PATH: &str =
    "/omnirelay.dispatcher.replication.ResourceLeaseReplicatorGrpc/Publish";

/// Encodes `event` as a protobuf message of schema `version`.
///
/// # Errors
///
/// [`EncodeError`] if the event has no form in `version` or the version is
/// unknown.
pub fn encode(
    event: &ResourceLeaseReplicationEvent,
    version: WireVersion,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(event, version, &mut out)?;
    Ok(out)
}

/// Appends the protobuf message of `event` in `version` to `out`.
///
/// # Errors
///
/// As [`encode`].
pub fn encode_into(
    event: &ResourceLeaseReplicationEvent,
    version: WireVersion,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    check_writable(event, version)?;
    direct::encode_into(event, version, out);
    Ok(())
}

/// Appends a metadata entry to an encoded event: decoded, the event has
/// `key` set to `value`, as [`Metadata::insert`] sets it, provided `key`
/// has no ASCII capital letters (decoding folds keys that differ only in
/// ASCII case in ordinal order, where such a key comes last and wins).
pub fn append_metadata(key: &str, value: &str, out: &mut Vec<u8>) {
    direct::metadata_entry(key, value, out);
}

/// Appends the schema version to an encoded event (one of version 1 is
/// also one of version 2, which has every field and type of version 1).
pub fn append_schema_version(version: WireVersion, out: &mut Vec<u8>) {
    direct::schema_version(version, out);
}

/// Appends `bytes`, an event of schema `version`, to `out` stamped with
/// `assignment`: decoded, it is the event of `bytes` after
/// [`ReplicationEvent::assign`](omnirelay_replication::ReplicationEvent::assign).
/// A protobuf field given again overrides the earlier one, so the stamp is
/// appended after the bytes.
///
/// # Errors
///
/// [`EncodeError::UnsupportedVersion`] for a version this crate does not
/// write.
pub fn stamp_into(
    bytes: &[u8],
    version: WireVersion,
    assignment: &Assignment<'_>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    if version != WireVersion::V1 && version != V2 {
        return Err(EncodeError::UnsupportedVersion(version));
    }
    thread_local! {
        /// The last timestamp stamped and its text: a batch's events share
        /// one.
        static LAST: Cell<Option<(Timestamp, TimestampText)>> = const { Cell::new(None) };
    }
    let text = LAST.with(|last| match last.get() {
        Some((at, text)) if at == assignment.timestamp => text,
        _ => {
            let text = assignment.timestamp.round_trip_text();
            last.set(Some((assignment.timestamp, text)));
            text
        }
    });
    out.extend_from_slice(bytes);
    direct::stamp(
        i64::try_from(assignment.sequence).unwrap_or(i64::MAX),
        text.as_str(),
        assignment.stream.as_str(),
        version,
        out,
    );
    Ok(())
}

/// Decodes a protobuf message of any known schema version.
///
/// # Errors
///
/// [`DecodeError`]: [`DecodeError::is_unsupported`] for an unknown event
/// type or a future schema version, otherwise a malformed message. Never
/// panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<ResourceLeaseReplicationEvent, DecodeError> {
    decode_with_version(bytes).map(|(event, _)| event)
}

/// Decodes a protobuf message and reports its schema version.
///
/// # Errors
///
/// As [`decode`].
pub fn decode_with_version(
    bytes: &[u8],
) -> Result<(ResourceLeaseReplicationEvent, WireVersion), DecodeError> {
    let message = pb::ResourceLeaseReplicationEventMessage::decode(bytes)
        .map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    from_message(message)
}

/// The message of `event` in schema `version`.
///
/// # Errors
///
/// As [`encode`].
pub fn to_message(
    event: &ResourceLeaseReplicationEvent,
    version: WireVersion,
) -> Result<pb::ResourceLeaseReplicationEventMessage, EncodeError> {
    check_writable(event, version)?;
    let v2 = version >= V2;
    Ok(pb::ResourceLeaseReplicationEventMessage {
        sequence_number: event.sequence_number,
        event_type: event.event_type.code(),
        timestamp: event.timestamp.to_round_trip_string(),
        peer_id: event.peer_id.clone().unwrap_or_default(),
        ownership: event.ownership.as_ref().map(ownership_message),
        payload: event.payload.as_ref().map(payload_message),
        error: event.error.as_ref().map(error_message),
        metadata: map_entries(&event.metadata),
        schema_version: if v2 { i32::from(version.get()) } else { 0 },
        stream_id: if v2 {
            event.stream_id.clone().unwrap_or_default()
        } else {
            String::new()
        },
        node_id: if v2 {
            event.node_id.clone().unwrap_or_default()
        } else {
            String::new()
        },
        items: if v2 {
            event.items.iter().map(pending_item_message).collect()
        } else {
            Vec::new()
        },
    })
}

/// The event of a message.
///
/// # Errors
///
/// As [`decode`].
pub fn from_message(
    m: pb::ResourceLeaseReplicationEventMessage,
) -> Result<(ResourceLeaseReplicationEvent, WireVersion), DecodeError> {
    let version = match m.schema_version {
        0 => WireVersion::V1,
        n if i64::from(n) > i64::from(LATEST.get()) => {
            return Err(DecodeError::UnsupportedVersion(n.into()));
        }
        n => u16::try_from(n)
            .ok()
            .and_then(WireVersion::new)
            .ok_or_else(|| DecodeError::field("schema_version", format!("{n} is not a version")))?,
    };
    let event_type = ResourceLeaseReplicationEventType::from_code(m.event_type.into())
        .ok_or_else(|| DecodeError::UnknownEventType(m.event_type.to_string()))?;
    let items = m
        .items
        .into_iter()
        .enumerate()
        .map(|(i, item)| pending_item(item).map_err(|e| e.within(&format!("items[{i}]"))))
        .collect::<Result<_, _>>()?;
    let event = ResourceLeaseReplicationEvent {
        sequence_number: m.sequence_number,
        event_type,
        timestamp: timestamp("timestamp", &m.timestamp)?,
        ownership: m
            .ownership
            .map(ownership)
            .transpose()
            .map_err(|e| e.within("ownership"))?,
        peer_id: non_empty(m.peer_id),
        payload: m.payload.map(payload),
        error: m.error.map(error_info),
        metadata: m.metadata.into_iter().collect(),
        stream_id: non_empty(m.stream_id),
        node_id: non_empty(m.node_id),
        items,
    };
    Ok((event, version))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A round-trip timestamp; `""` (an absent string) reads as
/// `0001-01-01T00:00:00+00:00`, as a missing JSON timestamp does.
fn timestamp(path: &str, text: &str) -> Result<Timestamp, DecodeError> {
    if text.is_empty() {
        return Ok(Timestamp::MIN);
    }
    Timestamp::parse(text).map_err(|e| DecodeError::field(path, e.to_string()))
}

fn map_entries(map: &Metadata) -> std::collections::BTreeMap<String, String> {
    map.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn ownership_message(o: &ResourceLeaseOwnershipHandle) -> pb::ResourceLeaseOwnershipHandleMessage {
    pb::ResourceLeaseOwnershipHandleMessage {
        sequence_id: o.sequence_id,
        attempt: o.attempt,
        lease_id: o.lease_id.to_bytes_le().to_vec(),
    }
}

fn ownership(
    m: pb::ResourceLeaseOwnershipHandleMessage,
) -> Result<ResourceLeaseOwnershipHandle, DecodeError> {
    let bytes: [u8; 16] = m.lease_id.as_slice().try_into().map_err(|_| {
        DecodeError::field(
            "lease_id",
            format!("expected 16 bytes, found {}", m.lease_id.len()),
        )
    })?;
    Ok(ResourceLeaseOwnershipHandle {
        sequence_id: m.sequence_id,
        attempt: m.attempt,
        lease_id: Uuid::from_bytes_le(bytes),
    })
}

fn payload_message(p: &ResourceLeaseItemPayload) -> pb::ResourceLeaseItemPayloadMessage {
    pb::ResourceLeaseItemPayloadMessage {
        resource_type: p.resource_type.clone(),
        resource_id: p.resource_id.clone(),
        partition_key: p.partition_key.clone(),
        payload_encoding: p.payload_encoding.clone(),
        body: p.body.clone(),
        attributes: p.attributes.as_ref().map(map_entries).unwrap_or_default(),
        request_id: p.request_id.clone().unwrap_or_default(),
    }
}

/// A payload; `attributes` is always present (`{}` when the message has
/// none), as every payload the reference dispatcher emits has it.
fn payload(m: pb::ResourceLeaseItemPayloadMessage) -> ResourceLeaseItemPayload {
    ResourceLeaseItemPayload {
        resource_type: m.resource_type,
        resource_id: m.resource_id,
        partition_key: m.partition_key,
        payload_encoding: m.payload_encoding,
        body: m.body,
        attributes: Some(m.attributes.into_iter().collect()),
        request_id: non_empty(m.request_id),
    }
}

fn error_message(e: &ResourceLeaseErrorInfo) -> pb::ResourceLeaseErrorInfoMessage {
    pb::ResourceLeaseErrorInfoMessage {
        message: e.message.clone(),
        code: e.code.clone().unwrap_or_default(),
    }
}

fn error_info(m: pb::ResourceLeaseErrorInfoMessage) -> ResourceLeaseErrorInfo {
    ResourceLeaseErrorInfo {
        message: m.message,
        code: non_empty(m.code),
    }
}

fn pending_item_message(item: &ResourceLeasePendingItem) -> pb::ResourceLeasePendingItemMessage {
    pb::ResourceLeasePendingItemMessage {
        payload: Some(payload_message(&item.payload)),
        attempt: item.attempt,
        enqueued_at: item.enqueued_at.to_round_trip_string(),
        last_error: item.last_error.as_ref().map(error_message),
        sequence_id: item.sequence_id,
        last_ownership_token: item.last_ownership_token.as_ref().map(ownership_message),
    }
}

fn pending_item(
    m: pb::ResourceLeasePendingItemMessage,
) -> Result<ResourceLeasePendingItem, DecodeError> {
    Ok(ResourceLeasePendingItem {
        payload: payload(
            m.payload
                .ok_or_else(|| DecodeError::field("payload", "is required"))?,
        ),
        attempt: m.attempt,
        enqueued_at: timestamp("enqueued_at", &m.enqueued_at)?,
        last_error: m.last_error.map(error_info),
        sequence_id: m.sequence_id,
        last_ownership_token: m
            .last_ownership_token
            .map(ownership)
            .transpose()
            .map_err(|e| e.within("last_ownership_token"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_use_dotnet_mixed_endian_bytes() {
        // The reference's worked example (reference §1.9).
        let id = Uuid::parse_str("6f1c2a9e-0d4b-4f7a-9a51-2b8c0e7d3f10").unwrap();
        let message = ownership_message(&ResourceLeaseOwnershipHandle {
            sequence_id: 1,
            attempt: 1,
            lease_id: id,
        });
        assert_eq!(
            message.lease_id,
            [
                0x9e, 0x2a, 0x1c, 0x6f, 0x4b, 0x0d, 0x7a, 0x4f, 0x9a, 0x51, 0x2b, 0x8c, 0x0e, 0x7d,
                0x3f, 0x10
            ]
        );
        assert_eq!(ownership(message).unwrap().lease_id, id);
    }

    #[test]
    fn a_minimal_v1_message_has_the_reference_wire_bytes() {
        // Computed by hand from the reference field numbers: 1 varint, 2
        // varint, 3 length-delimited string.
        let mut event =
            ResourceLeaseReplicationEvent::new(ResourceLeaseReplicationEventType::Completed);
        event.sequence_number = 300;
        event.timestamp = Timestamp::MIN;
        let ts = b"0001-01-01T00:00:00.0000000+00:00";
        let mut want = vec![0x08, 0xac, 0x02, 0x10, 0x04, 0x1a, 33];
        want.extend_from_slice(ts);
        assert_eq!(encode(&event, WireVersion::V1).unwrap(), want);
    }
}
