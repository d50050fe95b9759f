//! Property tests: every event round-trips through both formats, and no
//! input makes a decoder panic.

use omnirelay_replication::{Assignment, ReplicationEvent, StreamId, Timestamp, WireVersion};
use omnirelay_resourcelease::{
    Metadata, ResourceLeaseErrorInfo, ResourceLeaseItemPayload, ResourceLeaseOwnershipHandle,
    ResourceLeasePendingItem, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType,
    json, proto, version,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use uuid::Uuid;

/// A string that is never empty (protobuf cannot tell "" from absent).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._:-]{1,16}",
        any::<String>().prop_filter("non-empty", |s| !s.is_empty()),
    ]
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (0..=Timestamp::MAX.ticks()).prop_map(|t| Timestamp::from_ticks(t).unwrap())
}

fn map() -> impl Strategy<Value = Metadata> {
    vec((any::<String>(), any::<String>()), 0..4).prop_map(|entries| entries.into_iter().collect())
}

fn ownership() -> impl Strategy<Value = ResourceLeaseOwnershipHandle> {
    (any::<i64>(), any::<i32>(), any::<u128>()).prop_map(|(sequence_id, attempt, id)| {
        ResourceLeaseOwnershipHandle {
            sequence_id,
            attempt,
            lease_id: Uuid::from_u128(id),
        }
    })
}

fn payload() -> impl Strategy<Value = ResourceLeaseItemPayload> {
    (
        (
            any::<String>(),
            any::<String>(),
            any::<String>(),
            any::<String>(),
        ),
        vec(any::<u8>(), 0..64),
        map(),
        option::of(text()),
    )
        .prop_map(
            |(
                (resource_type, resource_id, partition_key, payload_encoding),
                body,
                attributes,
                request_id,
            )| {
                ResourceLeaseItemPayload {
                    resource_type,
                    resource_id,
                    partition_key,
                    payload_encoding,
                    body,
                    attributes: Some(attributes),
                    request_id,
                }
            },
        )
}

fn error() -> impl Strategy<Value = ResourceLeaseErrorInfo> {
    (any::<String>(), option::of(text()))
        .prop_map(|(message, code)| ResourceLeaseErrorInfo { message, code })
}

fn item() -> impl Strategy<Value = ResourceLeasePendingItem> {
    (
        payload(),
        any::<i32>(),
        timestamp(),
        option::of(error()),
        any::<i64>(),
        option::of(ownership()),
    )
        .prop_map(
            |(payload, attempt, enqueued_at, last_error, sequence_id, last_ownership_token)| {
                ResourceLeasePendingItem {
                    payload,
                    attempt,
                    enqueued_at,
                    last_error,
                    sequence_id,
                    last_ownership_token,
                }
            },
        )
}

fn event() -> impl Strategy<Value = ResourceLeaseReplicationEvent> {
    (
        (
            any::<i64>(),
            prop::sample::select(ResourceLeaseReplicationEventType::ALL.to_vec()),
            timestamp(),
        ),
        (
            option::of(ownership()),
            option::of(text()),
            option::of(payload()),
            option::of(error()),
        ),
        (
            map(),
            option::of(text()),
            option::of(text()),
            vec(item(), 0..3),
        ),
    )
        .prop_map(
            |(
                (sequence_number, event_type, timestamp),
                (ownership, peer_id, payload, error),
                (metadata, stream_id, node_id, items),
            )| {
                ResourceLeaseReplicationEvent {
                    sequence_number,
                    event_type,
                    timestamp,
                    ownership,
                    peer_id,
                    payload,
                    error,
                    metadata,
                    stream_id,
                    node_id,
                    // Only snapshot events carry items.
                    items: if event_type.is_snapshot() {
                        items
                    } else {
                        Vec::new()
                    },
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn json_v2_round_trips(event in event()) {
        let doc = json::encode(&event, version::V2).unwrap();
        let (back, v) = json::decode_with_version(&doc).unwrap();
        prop_assert_eq!(v, version::V2);
        prop_assert_eq!(&back, &event);
        // Canonical: encoding the decoded event gives the same bytes.
        prop_assert_eq!(json::encode(&back, version::V2).unwrap(), doc);
    }

    #[test]
    fn protobuf_v2_round_trips(event in event()) {
        let bytes = proto::encode(&event, version::V2).unwrap();
        prop_assert_eq!(proto::decode(&bytes).unwrap(), event);
    }

    #[test]
    fn protobuf_encoding_is_the_bytes_prost_writes_for_the_message(
        event in event(),
        v in prop::sample::select(vec![version::V1, version::V2]),
    ) {
        use prost::Message as _;
        match proto::to_message(&event, v) {
            Ok(message) => prop_assert_eq!(proto::encode(&event, v).unwrap(), message.encode_to_vec()),
            Err(_) => prop_assert!(proto::encode(&event, v).is_err()),
        }
    }

    #[test]
    fn version_one_keeps_every_reference_field(event in event()) {
        prop_assume!(event.event_type.since() == version::V1);
        let v1 = ResourceLeaseReplicationEvent { stream_id: None, node_id: None, items: Vec::new(), ..event.clone() };
        prop_assert_eq!(json::decode(&json::encode(&event, version::V1).unwrap()).unwrap(), v1.clone());
        prop_assert_eq!(proto::decode(&proto::encode(&event, version::V1).unwrap()).unwrap(), v1);
    }

    #[test]
    fn json_and_protobuf_agree(event in event()) {
        let via_json = json::decode(&json::encode(&event, version::V2).unwrap()).unwrap();
        let via_proto = proto::decode(&proto::encode(&event, version::V2).unwrap()).unwrap();
        prop_assert_eq!(via_json, via_proto);
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in vec(any::<u8>(), 0..512)) {
        let _ = json::decode(&bytes);
        let _ = proto::decode(&bytes);
    }

    #[test]
    fn mangled_documents_never_panic_the_json_decoder(
        event in event(),
        cut in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut doc = json::encode(&event, version::V2).unwrap();
        let at = cut.index(doc.len());
        doc[at] = byte;
        let _ = json::decode(&doc);
        doc.truncate(at);
        let _ = json::decode(&doc);
        let mut pb = proto::encode(&event, version::V2).unwrap();
        if !pb.is_empty() {
            let at = cut.index(pb.len());
            pb[at] = byte;
            let _ = proto::decode(&pb);
        }
    }
}

/// What a scan must read of `bytes`, which decode to `event`.
fn scan_agrees(
    scanned: &proto::Scanned,
    bytes: &[u8],
    event: &ResourceLeaseReplicationEvent,
    version: WireVersion,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(scanned.event_type, event.event_type);
    prop_assert_eq!(scanned.timestamp, event.timestamp);
    prop_assert_eq!(scanned.version, version);
    prop_assert_eq!(scanned.peer_id(bytes), event.peer_id.as_deref());
    if let Some(text) = scanned.round_trip_timestamp(bytes) {
        let rendered = event.timestamp.round_trip_text();
        prop_assert_eq!(text, rendered.as_str());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_scan_reads_what_decoding_reads(
        event in event(),
        v in prop::sample::select(vec![version::V1, version::V2]),
    ) {
        let Ok(bytes) = proto::encode(&event, v) else { return Ok(()) };
        let (decoded, version) = proto::decode_with_version(&bytes).unwrap();
        match proto::scan(&bytes) {
            Some(scanned) => {
                scan_agrees(&scanned, &bytes, &decoded, version)?;
                // Our encoder writes the round-trip form: a receiver keeps it.
                prop_assert!(scanned.round_trip_timestamp(&bytes).is_some());
            }
            // Snapshot items are left to decoding; nothing else is.
            None => prop_assert!(v == version::V2 && !event.items.is_empty()),
        }
    }

    #[test]
    fn a_scan_vouches_only_for_bytes_that_decode(
        event in event(),
        cut in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = proto::encode(&event, version::V2).unwrap();
        if !bytes.is_empty() {
            let at = cut.index(bytes.len());
            if truncate {
                bytes.truncate(at);
            } else {
                bytes[at] = byte;
            }
        }
        if let Some(scanned) = proto::scan(&bytes) {
            let decoded = proto::decode_with_version(&bytes);
            prop_assert!(decoded.is_ok(), "scanned, but decoding fails: {:?}", decoded.err());
            let (decoded, version) = decoded.unwrap();
            scan_agrees(&scanned, &bytes, &decoded, version)?;
        }
    }

    #[test]
    fn a_scan_of_arbitrary_bytes_vouches_only_for_bytes_that_decode(
        bytes in vec(any::<u8>(), 0..256),
    ) {
        if let Some(scanned) = proto::scan(&bytes) {
            let (decoded, version) = proto::decode_with_version(&bytes).unwrap();
            scan_agrees(&scanned, &bytes, &decoded, version)?;
        }
    }

    #[test]
    fn an_encoded_event_stamped_decodes_as_the_event_assigned(
        event in event(),
        v in prop::sample::select(vec![version::V1, version::V2]),
        sequence in 1..=i64::MAX as u64,
        at in timestamp(),
        stream in "[a-z][a-z0-9-]{0,20}",
    ) {
        let Ok(bytes) = proto::encode(&event, v) else { return Ok(()) };
        let stream = StreamId::new(&stream).unwrap();
        let assignment = Assignment { stream: &stream, sequence, timestamp: at };
        let mut stamped = Vec::new();
        proto::stamp_into(&bytes, v, &assignment, &mut stamped).unwrap();
        let decoded = proto::decode(&bytes).unwrap();
        let mut expected = decoded.clone();
        expected.assign(&assignment);
        if v == version::V1 {
            // Version 1 has no stream field.
            expected.stream_id = decoded.stream_id;
        }
        prop_assert_eq!(proto::decode(&stamped).unwrap(), expected);
    }

    #[test]
    fn metadata_and_version_appended_to_an_encoded_event_decode_as_set(
        event in event(),
        entries in vec((any::<String>(), any::<String>()), 0..4),
        reuse in any::<prop::sample::Index>(),
    ) {
        prop_assume!(event.event_type.since() == version::V1);
        let mut bytes = proto::encode(&event, version::V1).unwrap();
        let mut expected = proto::decode(&bytes).unwrap();
        // Keys without ASCII capitals (as the receiver's); one is a key the
        // event already has in any case, when it has any: replaced.
        let existing: Vec<String> = expected.metadata.iter().map(|(k, _)| k.to_owned()).collect();
        let mut entries: Vec<(String, String)> =
            entries.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        if !existing.is_empty() {
            let key = existing[reuse.index(existing.len())].to_ascii_lowercase();
            entries.push((key, "replaced".to_owned()));
        }
        for (k, value) in &entries {
            proto::append_metadata(k, value, &mut bytes);
            expected.metadata.insert(k.as_str(), value.as_str());
        }
        proto::append_schema_version(version::V2, &mut bytes);
        let (decoded, v) = proto::decode_with_version(&bytes).unwrap();
        prop_assert_eq!(v, version::V2);
        prop_assert_eq!(decoded, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn metadata_read_without_decoding_is_what_decoding_gives(
        event in event(),
        extra in vec((prop::sample::select(vec!["origin.a", "Origin.A", "ORIGIN.A", "origin.b"]), any::<String>()), 0..6),
        v in prop::sample::select(vec![version::V1, version::V2]),
    ) {
        let Ok(mut bytes) = proto::encode(&event, v) else { return Ok(()) };
        // Entries appended as they come: case variants and repeats of a key.
        for (k, value) in &extra {
            proto::append_metadata(k, value, &mut bytes);
        }
        let decoded = proto::decode(&bytes).unwrap();
        let keys = ["origin.a", "origin.b", "queue.pending"];
        match proto::metadata(&bytes, keys) {
            Some(values) => {
                for (key, value) in keys.iter().zip(values) {
                    prop_assert_eq!(value, decoded.metadata.get(key), "{}", key);
                }
            }
            None => prop_assert!(proto::scan(&bytes).is_none()),
        }
    }
}

/// An operation on a metadata map.
#[derive(Clone, Debug)]
enum MapOp {
    Insert(String, String),
    Remove(String),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Metadata behaves as the reference's case-insensitive dictionary,
    /// iterated in ordinal key order: a model keeps a plain list and
    /// drops any key equal without regard to ASCII case on insert.
    #[test]
    fn metadata_is_a_case_insensitive_map_in_ordinal_order(
        ops in vec(
            prop_oneof![
                ("[aAbB.]{0,3}", "[xy]{0,2}").prop_map(|(k, v)| MapOp::Insert(k, v)),
                "[aAbB.]{0,3}".prop_map(MapOp::Remove),
            ],
            0..40,
        )
    ) {
        let mut map = Metadata::new();
        let mut model: Vec<(String, String)> = Vec::new();
        for op in ops {
            match op {
                MapOp::Insert(key, value) => {
                    model.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
                    model.push((key.clone(), value.clone()));
                    map.insert(key, value);
                }
                MapOp::Remove(key) => {
                    let held = model.iter().position(|(k, _)| k.eq_ignore_ascii_case(&key));
                    let want = held.map(|i| model.remove(i).1);
                    prop_assert_eq!(map.remove(&key), want);
                }
            }
            let mut sorted = model.clone();
            sorted.sort();
            let seen: Vec<(String, String)> =
                map.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            prop_assert_eq!(&seen, &sorted);
            prop_assert_eq!(map.len(), sorted.len());
            for key in ["", "a", "A", "ab", "AB", "b.", "B."] {
                let want = model
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v.as_str());
                prop_assert_eq!(map.get(key), want, "key {:?}", key);
            }
            let rebuilt: Metadata = sorted.iter().cloned().collect();
            prop_assert_eq!(&rebuilt, &map);
        }
    }
}
