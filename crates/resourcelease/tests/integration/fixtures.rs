//! Golden fixtures: every one decodes, re-encodes byte for byte in JSON and
//! protobuf, and its version-1 form stays readable.

use std::collections::BTreeSet;

use omnirelay_replication::WireVersion;
use omnirelay_resourcelease::{
    EncodeError, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType, json, proto,
    version,
};

use crate::support::fixtures;

/// Set `ORTEST_BLESS=1` to (re)write the protobuf fixtures from the JSON
/// ones; review the diff before committing.
fn blessing() -> bool {
    std::env::var_os("ORTEST_BLESS").is_some_and(|v| v == "1")
}

#[test]
fn json_fixtures_decode_and_reencode_byte_for_byte() {
    for f in fixtures() {
        let (event, version) =
            json::decode_with_version(&f.json).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        assert_eq!(version, f.version, "{}: version", f.name);
        let again = json::encode(&event, f.version).unwrap();
        assert_eq!(
            String::from_utf8(again).unwrap(),
            String::from_utf8(f.json.clone()).unwrap(),
            "{}: re-encoding differs",
            f.name
        );
    }
}

#[test]
fn protobuf_fixtures_match_the_json_ones() {
    for f in fixtures() {
        let event = json::decode(&f.json).unwrap();
        let encoded = proto::encode(&event, f.version).unwrap();
        if blessing() {
            std::fs::write(&f.proto_path, &encoded).unwrap();
        }
        let golden = std::fs::read(&f.proto_path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with ORTEST_BLESS=1)", f.name));
        assert_eq!(encoded, golden, "{}: protobuf encoding differs", f.name);
        let (decoded, version) = proto::decode_with_version(&golden).unwrap();
        assert_eq!(version, f.version, "{}", f.name);
        assert_eq!(
            decoded, event,
            "{}: protobuf decodes to another event",
            f.name
        );
    }
}

#[test]
fn every_event_type_has_a_fixture_in_every_version_that_has_it() {
    let fixtures = fixtures();
    for v in [version::V1, version::V2] {
        let covered: BTreeSet<_> = fixtures
            .iter()
            .filter(|f| f.version == v)
            .map(|f| json::decode(&f.json).unwrap().event_type)
            .collect();
        let expected: BTreeSet<_> = ResourceLeaseReplicationEventType::ALL
            .into_iter()
            .filter(|t| t.since() <= v)
            .collect();
        assert_eq!(covered, expected, "event types with a {v} fixture");
    }
}

/// Drops what a version-1 document cannot hold.
fn v1_view(event: &ResourceLeaseReplicationEvent) -> ResourceLeaseReplicationEvent {
    ResourceLeaseReplicationEvent {
        stream_id: None,
        node_id: None,
        items: Vec::new(),
        ..event.clone()
    }
}

#[test]
fn version_one_output_of_every_fixture_stays_readable() {
    for f in fixtures() {
        let event = json::decode(&f.json).unwrap();
        match json::encode(&event, version::V1) {
            Ok(doc) => {
                assert!(!String::from_utf8_lossy(&doc).contains("schemaVersion"));
                let (back, v) = json::decode_with_version(&doc).unwrap();
                assert_eq!(v, WireVersion::V1);
                assert_eq!(back, v1_view(&event), "{}", f.name);
                let pb = proto::encode(&event, version::V1).unwrap();
                assert_eq!(proto::decode(&pb).unwrap(), v1_view(&event), "{}", f.name);
            }
            Err(EncodeError::Unrepresentable { event_type, .. }) => {
                assert_eq!(event_type.since(), version::V2, "{}", f.name);
                assert!(proto::encode(&event, version::V1).is_err());
            }
            Err(e) => panic!("{}: {e}", f.name),
        }
    }
}

#[test]
fn the_reference_example_is_reproduced_exactly() {
    // Reference §1.7, the second event of the integration scenario. Its
    // metadata order is unspecified; ours is ordinal.
    let reference = concat!(
        r#"{"sequenceNumber":2,"eventType":"LeaseGranted","timestamp":"2025-11-27T18:49:03.4567891+00:00","#,
        r#""ownership":{"sequenceId":1,"attempt":1,"leaseId":"6f1c2a9e-0d4b-4f7a-9a51-2b8c0e7d3f10"},"#,
        r#""peerId":"integration-peer","#,
        r#""payload":{"resourceType":"lakehouse","resourceId":"leases","partitionKey":"partition-1","payloadEncoding":"json","#,
        r#""body":"eyJqb2IiOiJzeW5jIn0=","attributes":{"owner":"integration"},"requestId":"request-1"},"#,
        r#""metadata":{"queue.pending":"0","queue.active":"1"}}"#
    );
    let event = json::decode(reference.as_bytes()).unwrap();
    assert_eq!(event.payload.as_ref().unwrap().body, br#"{"job":"sync"}"#);
    let canonical = reference.replace(
        r#"{"queue.pending":"0","queue.active":"1"}"#,
        r#"{"queue.active":"1","queue.pending":"0"}"#,
    );
    assert_eq!(
        String::from_utf8(json::encode(&event, version::V1).unwrap()).unwrap(),
        canonical
    );
    let fixture = fixtures()
        .into_iter()
        .find(|f| f.name == "v1/lease_granted")
        .unwrap();
    assert_eq!(fixture.json, canonical.as_bytes());
}

#[test]
fn a_failed_event_carries_failure_requeued_true() {
    let f = fixtures()
        .into_iter()
        .find(|f| f.name == "v1/failed")
        .unwrap();
    let event = json::decode(&f.json).unwrap();
    assert_eq!(event.event_type, ResourceLeaseReplicationEventType::Failed);
    assert_eq!(event.metadata.get("failure.requeued"), Some("True"));
    let error = event.error.unwrap();
    assert_eq!(
        (error.message.as_str(), error.code.as_deref()),
        ("boom", Some("error.resourcelease.failed"))
    );
}

#[test]
fn the_escaping_fixture_holds_what_its_escapes_say() {
    let f = fixtures()
        .into_iter()
        .find(|f| f.name == "v1/failed_escaped")
        .unwrap();
    let event = json::decode(&f.json).unwrap();
    assert_eq!(event.peer_id.as_deref(), Some("worker \"é\""));
    let payload = event.payload.unwrap();
    assert_eq!(payload.resource_id, "a+b<c>d");
    assert_eq!(payload.body, [0xfb, 0xfe, 0xfe, 0xff]);
    let attributes = payload.attributes.unwrap();
    assert_eq!(attributes.get("note"), Some("it's `fine`\n\ttab"));
    assert_eq!(attributes.get("ümlaut"), Some("😀"));
    assert_eq!(
        event.error.unwrap().message,
        "worker exception: <timeout> \\ retry"
    );
}

#[test]
fn snapshot_items_survive_both_formats() {
    let f = fixtures()
        .into_iter()
        .find(|f| f.name == "v2/drain_snapshot")
        .unwrap();
    let event = json::decode(&f.json).unwrap();
    assert_eq!(event.items.len(), 2);
    assert_eq!(event.items[0].attempt, 3);
    assert_eq!(event.items[0].last_ownership_token.unwrap().attempt, 2);
    assert!(event.items[1].last_error.is_none());
    let empty = fixtures()
        .into_iter()
        .find(|f| f.name == "v2/drain_snapshot_empty")
        .unwrap();
    let event = json::decode(&empty.json).unwrap();
    let via_proto = proto::decode(&proto::encode(&event, version::V2).unwrap()).unwrap();
    assert_eq!(
        json::encode(&via_proto, version::V2).unwrap(),
        empty.json,
        "items:[] kept"
    );
}
