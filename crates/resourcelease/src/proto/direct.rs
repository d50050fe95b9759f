//! The protobuf encoding of an event written straight from the event: the
//! bytes prost writes for the message of [`super::to_message`] (a property
//! test holds the two equal), without building that message first (a copy
//! of every string and map, most of the encoding's cost).
//!
//! proto3 rules as prost applies them: fields in number order; a scalar,
//! string or bytes field equal to its default is left out; a present
//! message field is written even when empty; a map entry leaves out a key
//! or value equal to its default.

use omnirelay_replication::WireVersion;

use crate::event::{
    Metadata, ResourceLeaseErrorInfo, ResourceLeaseItemPayload, ResourceLeaseOwnershipHandle,
    ResourceLeasePendingItem, ResourceLeaseReplicationEvent,
};
use crate::version::V2;

const VARINT: u32 = 0;
const LEN: u32 = 2;

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        // Truncation intended: the low seven bits with the continuation bit.
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    // Seven bits per byte; at least one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(tag: u32, wire_type: u32, out: &mut Vec<u8>) {
    varint(u64::from(tag << 3 | wire_type), out);
}

fn key_len(tag: u32) -> usize {
    varint_len(u64::from(tag << 3))
}

/// An `int32` or `int64` field (an `int32` sign-extended, as protobuf
/// writes negative numbers).
fn int(tag: u32, value: i64, out: &mut Vec<u8>) {
    if value != 0 {
        key(tag, VARINT, out);
        // Two's complement, as protobuf writes negative numbers.
        varint(value as u64, out);
    }
}

fn int_len(tag: u32, value: i64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + varint_len(value as u64)
    }
}

/// A `string` or `bytes` field.
fn bytes(tag: u32, value: &[u8], out: &mut Vec<u8>) {
    if !value.is_empty() {
        key(tag, LEN, out);
        varint(value.len() as u64, out);
        out.extend_from_slice(value);
    }
}

fn bytes_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        key_len(tag) + varint_len(value.len() as u64) + value.len()
    }
}

/// The key and length of a present message field of `len` bytes.
fn message_header(tag: u32, len: usize, out: &mut Vec<u8>) {
    key(tag, LEN, out);
    varint(len as u64, out);
}

fn message_len(tag: u32, len: usize) -> usize {
    key_len(tag) + varint_len(len as u64) + len
}

fn str_of(value: Option<&String>) -> &[u8] {
    value.map_or(&[], |s| s.as_bytes())
}

fn entry_len(k: &str, v: &str) -> usize {
    bytes_len(1, k.as_bytes()) + bytes_len(2, v.as_bytes())
}

fn entry(tag: u32, k: &str, v: &str, out: &mut Vec<u8>) {
    message_header(tag, entry_len(k, v), out);
    bytes(1, k.as_bytes(), out);
    bytes(2, v.as_bytes(), out);
}

fn map(tag: u32, map: Option<&Metadata>, out: &mut Vec<u8>) {
    for (k, v) in map.into_iter().flat_map(Metadata::iter) {
        entry(tag, k, v, out);
    }
}

/// Appends field `tag` with `value` even when it is the default, so that
/// it overrides an earlier occurrence.
fn explicit_int(tag: u32, value: i64, out: &mut Vec<u8>) {
    key(tag, VARINT, out);
    varint(value as u64, out);
}

/// As [`explicit_int`], for a string or bytes field.
fn explicit_bytes(tag: u32, value: &[u8], out: &mut Vec<u8>) {
    key(tag, LEN, out);
    varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// Appends a metadata entry (a later entry of a key replaces an earlier).
pub(super) fn metadata_entry(k: &str, v: &str, out: &mut Vec<u8>) {
    entry(8, k, v, out);
}

/// Appends the schema version.
pub(super) fn schema_version(version: WireVersion, out: &mut Vec<u8>) {
    explicit_int(9, i64::from(version.get()), out);
}

/// Appends what [`ResourceLeaseReplicationEvent::assign`] stamps, as
/// fields of `version`, overriding what the message before them holds.
pub(super) fn stamp(
    sequence: i64,
    timestamp: &str,
    stream: &str,
    version: WireVersion,
    out: &mut Vec<u8>,
) {
    explicit_int(1, sequence, out);
    explicit_bytes(3, timestamp.as_bytes(), out);
    if version >= V2 {
        explicit_bytes(10, stream.as_bytes(), out);
    }
}

fn map_len(tag: u32, map: Option<&Metadata>) -> usize {
    map.into_iter()
        .flat_map(Metadata::iter)
        .map(|(k, v)| message_len(tag, entry_len(k, v)))
        .sum()
}

fn ownership_len(o: &ResourceLeaseOwnershipHandle) -> usize {
    int_len(1, o.sequence_id) + int_len(2, i64::from(o.attempt)) + bytes_len(3, &[0; 16])
}

fn ownership(tag: u32, o: &ResourceLeaseOwnershipHandle, out: &mut Vec<u8>) {
    message_header(tag, ownership_len(o), out);
    int(1, o.sequence_id, out);
    int(2, i64::from(o.attempt), out);
    bytes(3, &o.lease_id.to_bytes_le(), out);
}

fn error_len(e: &ResourceLeaseErrorInfo) -> usize {
    bytes_len(1, e.message.as_bytes()) + bytes_len(2, str_of(e.code.as_ref()))
}

fn error(tag: u32, e: &ResourceLeaseErrorInfo, out: &mut Vec<u8>) {
    message_header(tag, error_len(e), out);
    bytes(1, e.message.as_bytes(), out);
    bytes(2, str_of(e.code.as_ref()), out);
}

fn payload_len(p: &ResourceLeaseItemPayload) -> usize {
    bytes_len(1, p.resource_type.as_bytes())
        + bytes_len(2, p.resource_id.as_bytes())
        + bytes_len(3, p.partition_key.as_bytes())
        + bytes_len(4, p.payload_encoding.as_bytes())
        + bytes_len(5, &p.body)
        + map_len(6, p.attributes.as_ref())
        + bytes_len(7, str_of(p.request_id.as_ref()))
}

fn payload(tag: u32, p: &ResourceLeaseItemPayload, out: &mut Vec<u8>) {
    message_header(tag, payload_len(p), out);
    bytes(1, p.resource_type.as_bytes(), out);
    bytes(2, p.resource_id.as_bytes(), out);
    bytes(3, p.partition_key.as_bytes(), out);
    bytes(4, p.payload_encoding.as_bytes(), out);
    bytes(5, &p.body, out);
    map(6, p.attributes.as_ref(), out);
    bytes(7, str_of(p.request_id.as_ref()), out);
}

fn item_len(item: &ResourceLeasePendingItem) -> usize {
    message_len(1, payload_len(&item.payload))
        + int_len(2, i64::from(item.attempt))
        + bytes_len(3, item.enqueued_at.round_trip_text().as_str().as_bytes())
        + item
            .last_error
            .as_ref()
            .map_or(0, |e| message_len(4, error_len(e)))
        + int_len(5, item.sequence_id)
        + item
            .last_ownership_token
            .as_ref()
            .map_or(0, |o| message_len(6, ownership_len(o)))
}

fn item(tag: u32, item: &ResourceLeasePendingItem, out: &mut Vec<u8>) {
    message_header(tag, item_len(item), out);
    payload(1, &item.payload, out);
    int(2, i64::from(item.attempt), out);
    bytes(
        3,
        item.enqueued_at.round_trip_text().as_str().as_bytes(),
        out,
    );
    if let Some(e) = &item.last_error {
        error(4, e, out);
    }
    int(5, item.sequence_id, out);
    if let Some(o) = &item.last_ownership_token {
        ownership(6, o, out);
    }
}

/// Appends the message of `event` in `version` to `out`; the version is
/// known writable (see [`crate::version::check_writable`]).
pub(super) fn encode_into(
    event: &ResourceLeaseReplicationEvent,
    version: WireVersion,
    out: &mut Vec<u8>,
) {
    let v2 = version >= V2;
    let timestamp = event.timestamp.round_trip_text();
    let mut len = int_len(1, event.sequence_number)
        + int_len(2, i64::from(event.event_type.code()))
        + bytes_len(3, timestamp.as_str().as_bytes())
        + bytes_len(4, str_of(event.peer_id.as_ref()))
        + event
            .ownership
            .as_ref()
            .map_or(0, |o| message_len(5, ownership_len(o)))
        + event
            .payload
            .as_ref()
            .map_or(0, |p| message_len(6, payload_len(p)))
        + event
            .error
            .as_ref()
            .map_or(0, |e| message_len(7, error_len(e)))
        + map_len(8, Some(&event.metadata));
    if v2 {
        len += int_len(9, i64::from(version.get()))
            + bytes_len(10, str_of(event.stream_id.as_ref()))
            + bytes_len(11, str_of(event.node_id.as_ref()))
            + event
                .items
                .iter()
                .map(|i| message_len(12, item_len(i)))
                .sum::<usize>();
    }
    out.reserve(len);
    int(1, event.sequence_number, out);
    int(2, i64::from(event.event_type.code()), out);
    bytes(3, timestamp.as_str().as_bytes(), out);
    bytes(4, str_of(event.peer_id.as_ref()), out);
    if let Some(o) = &event.ownership {
        ownership(5, o, out);
    }
    if let Some(p) = &event.payload {
        payload(6, p, out);
    }
    if let Some(e) = &event.error {
        error(7, e, out);
    }
    map(8, Some(&event.metadata), out);
    if v2 {
        int(9, i64::from(version.get()), out);
        bytes(10, str_of(event.stream_id.as_ref()), out);
        bytes(11, str_of(event.node_id.as_ref()), out);
        for i in &event.items {
            item(12, i, out);
        }
    }
}
