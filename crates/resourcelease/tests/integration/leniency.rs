//! The JSON reader is as lenient as the reference's System.Text.Json
//! settings, and strict where they are.

use omnirelay_replication::{Timestamp, WireVersion};
use omnirelay_resourcelease::{DecodeError, ResourceLeaseReplicationEventType as T, json, proto};

fn decode(
    doc: &str,
) -> Result<omnirelay_resourcelease::ResourceLeaseReplicationEvent, DecodeError> {
    json::decode(doc.as_bytes())
}

const TS: &str = r#""timestamp":"2025-11-27T18:49:03+00:00""#;

#[test]
fn event_type_by_number_or_by_name_in_any_case() {
    for value in [
        "2",
        r#""LeaseGranted""#,
        r#""leasegranted""#,
        r#""LEASEGRANTED""#,
        r#""2""#,
        r#"" leaseGranted ""#,
    ] {
        let event = decode(&format!(r#"{{"eventType":{value},{TS}}}"#)).unwrap();
        assert_eq!(event.event_type, T::LeaseGranted, "{value}");
    }
}

#[test]
fn numbers_from_numeric_strings() {
    let event = decode(&format!(
        r#"{{"sequenceNumber":"42","eventType":1,{TS},"ownership":{{"sequenceId":"7","attempt":"-1","leaseId":"6F1C2A9E-0D4B-4F7A-9A51-2B8C0E7D3F10"}}}}"#
    ))
    .unwrap();
    assert_eq!(event.sequence_number, 42);
    let ownership = event.ownership.unwrap();
    assert_eq!((ownership.sequence_id, ownership.attempt), (7, -1));
    assert_eq!(
        ownership.lease_id.to_string(),
        "6f1c2a9e-0d4b-4f7a-9a51-2b8c0e7d3f10"
    );
}

#[test]
fn property_names_in_any_case() {
    let event = decode(
        r#"{"SequenceNumber":5,"EVENTTYPE":"Completed","TimeStamp":"2025-11-27T18:49:03Z","PEERID":"p","Metadata":{"Queue.Pending":"1"}}"#,
    )
    .unwrap();
    assert_eq!(event.sequence_number, 5);
    assert_eq!(event.event_type, T::Completed);
    assert_eq!(event.peer_id.as_deref(), Some("p"));
    // Metadata keys are verbatim (and looked up without regard to case).
    assert_eq!(event.metadata.iter().next(), Some(("Queue.Pending", "1")));
    assert_eq!(event.metadata.get("queue.pending"), Some("1"));
}

#[test]
fn unknown_fields_are_ignored_and_missing_metadata_is_empty() {
    let event = decode(&format!(
        r#"{{"eventType":"Enqueue",{TS},"future":{{"nested":[1,2,{{"x":null}}]}},"another":true}}"#
    ))
    .unwrap();
    assert!(event.metadata.is_empty());
    assert_eq!(event.sequence_number, 0);
    let doc = json::encode(&event, WireVersion::V1).unwrap();
    assert!(
        String::from_utf8(doc)
            .unwrap()
            .ends_with(r#""metadata":{}}"#)
    );
}

#[test]
fn absent_values_read_as_the_reference_reads_them() {
    let event = decode(r#"{"eventType":"Enqueue","payload":{"resourceType":"t","body":null},"metadata":null,"peerId":null}"#).unwrap();
    assert_eq!(event.timestamp, Timestamp::MIN, "default(DateTimeOffset)");
    assert!(event.metadata.is_empty());
    assert_eq!(event.peer_id, None);
    let payload = event.payload.unwrap();
    assert_eq!(payload.resource_type, "t");
    assert_eq!(payload.resource_id, "");
    assert!(payload.body.is_empty());
    assert_eq!(payload.attributes, None);
}

#[test]
fn offsets_are_converted_to_utc() {
    let event = decode(r#"{"eventType":1,"timestamp":"2025-11-27T20:49:03.5+02:00"}"#).unwrap();
    assert_eq!(
        event.timestamp.to_json_string(),
        "2025-11-27T18:49:03.5+00:00"
    );
}

#[test]
fn malformed_values_are_clear_errors_naming_the_field() {
    let cases = [
        (
            r#"{"sequenceNumber":"x","eventType":1}"#,
            "sequenceNumber: \"x\" is not an integer",
        ),
        (
            r#"{"sequenceNumber":1.5,"eventType":1}"#,
            "sequenceNumber: expected an integer, found a non-integral number",
        ),
        (
            r#"{"sequenceNumber":9223372036854775808,"eventType":1}"#,
            "sequenceNumber: 9223372036854775808 is out of range",
        ),
        (
            // Past u64, JSON readers hand the number over as a float.
            r#"{"sequenceNumber":99999999999999999999,"eventType":1}"#,
            "sequenceNumber: expected an integer, found a number out of range",
        ),
        (
            r#"{"eventType":1,"timestamp":"yesterday"}"#,
            "timestamp: invalid timestamp \"yesterday\"",
        ),
        (
            r#"{"eventType":1,"ownership":{"leaseId":"not-a-guid"}}"#,
            "ownership.leaseId:",
        ),
        (
            r#"{"eventType":1,"ownership":{"leaseId":"6f1c2a9e0d4b4f7a9a512b8c0e7d3f10"}}"#,
            "ownership.leaseId: \"6f1c2a9e0d4b4f7a9a512b8c0e7d3f10\" is not a hyphenated 36-character GUID",
        ),
        (
            r#"{"eventType":1,"ownership":"x"}"#,
            "ownership: expected an object, found a string",
        ),
        (
            r#"{"eventType":1,"payload":{"body":"***"}}"#,
            "payload.body: invalid base64",
        ),
        (
            r#"{"eventType":1,"payload":{"attributes":{"a":1}}}"#,
            "payload.attributes.a: expected a string value, found an integer",
        ),
        (
            r#"{"eventType":1,"metadata":[]}"#,
            "metadata: expected an object of strings, found an array",
        ),
        (
            r#"{"eventType":true}"#,
            "eventType: expected a name or number, found a boolean",
        ),
        (
            r#"{"timestamp":"2025-11-27T18:49:03Z"}"#,
            "eventType: is required",
        ),
        (
            r#"{"schemaVersion":2,"eventType":6,"items":[{"attempt":1}]}"#,
            "items[0].payload: is required",
        ),
        (
            r#"{"schemaVersion":2,"eventType":6,"items":[null]}"#,
            "items[0]: must not be null",
        ),
        (
            r#"{"schemaVersion":0,"eventType":1}"#,
            "schemaVersion: 0 is not a version",
        ),
        (
            r#"[1,2]"#,
            "invalid json: expected an object, found an array",
        ),
        (
            r#"null"#,
            "invalid json: expected a JSON object, found null",
        ),
        (
            r#"{"eventType":1"#,
            "invalid json: EOF while parsing an object",
        ),
        (
            r#"{"eventType":1} trailing"#,
            "invalid json: trailing characters",
        ),
        ("", "invalid json: EOF while parsing a value"),
    ];
    for (doc, want) in cases {
        let err = decode(doc).unwrap_err();
        assert!(!err.is_unsupported(), "{doc}: {err}");
        assert!(
            err.to_string().starts_with(want),
            "{doc}\n  got:  {err}\n  want: {want}…"
        );
    }
}

#[test]
fn unknown_types_and_future_versions_are_typed_quarantine_errors() {
    let cases = [
        (
            r#"{"eventType":99,"timestamp":"2025-11-27T18:49:03Z"}"#,
            DecodeError::UnknownEventType("99".into()),
        ),
        (
            r#"{"eventType":0}"#,
            DecodeError::UnknownEventType("0".into()),
        ),
        (
            r#"{"eventType":"LeaseStolen"}"#,
            DecodeError::UnknownEventType("\"LeaseStolen\"".into()),
        ),
        (
            r#"{"schemaVersion":99,"eventType":1}"#,
            DecodeError::UnsupportedVersion(99),
        ),
        // A future document is recognised as such even where nothing else
        // in it reads.
        (
            r#"{"schemaVersion":"3","eventType":{"new":"shape"},"timestamp":12}"#,
            DecodeError::UnsupportedVersion(3),
        ),
    ];
    for (doc, want) in cases {
        let err = decode(doc).unwrap_err();
        assert!(err.is_unsupported(), "{doc}: {err}");
        assert_eq!(err, want, "{doc}");
    }
}

#[test]
fn protobuf_reader_has_the_same_typed_errors() {
    use omnirelay_resourcelease::proto::pb;
    use prost::Message as _;
    let mut m = pb::ResourceLeaseReplicationEventMessage {
        event_type: 42,
        ..Default::default()
    };
    let err = proto::decode(&m.encode_to_vec()).unwrap_err();
    assert_eq!(err, DecodeError::UnknownEventType("42".into()));
    m.event_type = 1;
    m.schema_version = 7;
    let err = proto::decode(&m.encode_to_vec()).unwrap_err();
    assert_eq!(err, DecodeError::UnsupportedVersion(7));
    m.schema_version = 0;
    m.ownership = Some(pb::ResourceLeaseOwnershipHandleMessage {
        lease_id: vec![1, 2, 3],
        ..Default::default()
    });
    let err = proto::decode(&m.encode_to_vec()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ownership.lease_id: expected 16 bytes, found 3"
    );
    m.ownership = None;
    m.timestamp = "nope".into();
    assert!(
        proto::decode(&m.encode_to_vec())
            .unwrap_err()
            .to_string()
            .starts_with("timestamp: invalid timestamp")
    );
    let err = proto::decode(&[0xff, 0xff, 0xff]).unwrap_err();
    assert!(matches!(err, DecodeError::Protobuf(_)), "{err}");
}

#[test]
fn a_v1_writer_refuses_types_v1_lacks_so_the_caller_can_count_them() {
    let event = decode(r#"{"schemaVersion":2,"eventType":"DeadLettered"}"#).unwrap();
    let err = json::encode(&event, WireVersion::V1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "DeadLettered events have no form in schema v1 (they need v2)"
    );
    let codec_err: omnirelay_replication::CodecError = err.into();
    assert_eq!(
        codec_err.kind(),
        omnirelay_replication::CodecErrorKind::Unrepresentable
    );
    let err = json::encode(&event, WireVersion::new(3).unwrap()).unwrap_err();
    assert!(err.to_string().contains("not supported"), "{err}");
}
