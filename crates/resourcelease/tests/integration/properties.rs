//! Property tests: every event round-trips through both formats, and no
//! input makes a decoder panic.

use omnirelay_replication::Timestamp;
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
