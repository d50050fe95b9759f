//! JSON encode and decode of resource-lease events against a plain
//! `serde_json` loop over the same events.
//!
//! The baseline serializes a `#[derive(Serialize, Deserialize)]` mirror of
//! the event whose timestamp, body and lease id are already strings: the
//! least work that produces the same document. Our codec does everything
//! the reference format needs on top (timestamp and GUID formatting,
//! base64, System.Text.Json escaping; on read, case-insensitive names,
//! numbers from strings, typed errors).

use std::collections::BTreeMap;
use std::hint::black_box;

use omnirelay_replication::Timestamp;
use omnirelay_resourcelease::{
    Metadata, ResourceLeaseErrorInfo, ResourceLeaseItemPayload, ResourceLeaseOwnershipHandle,
    ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType as Type, json, version,
};
use serde::{Deserialize, Serialize};

use crate::scenario::{Scenario, Side};

const EVENTS: usize = 256;

/// The benchmark corpus: a deterministic mix of event types and sizes
/// shaped like the mesh demo's traffic.
pub(crate) fn corpus() -> Vec<ResourceLeaseReplicationEvent> {
    let types = [
        Type::Enqueue,
        Type::LeaseGranted,
        Type::Completed,
        Type::Heartbeat,
        Type::Failed,
    ];
    (0..EVENTS)
        .map(|i| {
            let n = i as i64;
            let event_type = types[i % types.len()];
            let mut event = ResourceLeaseReplicationEvent::new(event_type);
            event.sequence_number = n + 1;
            event.timestamp = Timestamp::from_unix_millis(1_764_269_343_000 + n * 7).unwrap_or_default();
            event.peer_id = Some(format!("mesh-worker-{}", i % 4));
            if event_type != Type::Enqueue {
                event.ownership = Some(ResourceLeaseOwnershipHandle {
                    sequence_id: n / 5 + 1,
                    attempt: 1 + (i % 3) as i32,
                    lease_id: uuid::Uuid::from_u128(0x6f1c_2a9e_0d4b_4f7a_9a51_2b8c_0e7d_3f10 ^ i as u128),
                });
            }
            if event_type != Type::Heartbeat {
                let body = format!(
                    r#"{{"catalog":"fabric-lakehouse","database":"sales","table":"orders_{i}","operation":"CommitSnapshot","version":{i},"changes":{}}}"#,
                    i * 13 % 97
                );
                event.payload = Some(ResourceLeaseItemPayload {
                    resource_type: "lakehouse.catalog".into(),
                    resource_id: format!("fabric-lakehouse.sales.orders_{i}.v{i:04}"),
                    partition_key: "fabric-lakehouse".into(),
                    payload_encoding: "application/json".into(),
                    body: body.into_bytes(),
                    attributes: Some(Metadata::from([
                        ("catalog", "fabric-lakehouse"),
                        ("database", "sales"),
                        ("operation", "CommitSnapshot"),
                    ])),
                    request_id: Some(uuid::Uuid::from_u128(i as u128 * 0x9e37_79b9).to_string()),
                });
            }
            if event_type == Type::Failed {
                event.error = Some(ResourceLeaseErrorInfo {
                    message: "stale catalog version".into(),
                    code: Some("mesh.demo.failure".into()),
                });
                event.metadata.insert("failure.requeued", "False");
            }
            event.metadata.insert("queue.pending", (i % 64).to_string());
            event.metadata.insert("queue.active", (i % 8).to_string());
            event
        })
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEvent {
    sequence_number: i64,
    event_type: String,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ownership: Option<RawOwnership>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<RawPayload>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RawError>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawOwnership {
    sequence_id: i64,
    attempt: i32,
    lease_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPayload {
    resource_type: String,
    resource_id: String,
    partition_key: String,
    payload_encoding: String,
    body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    attributes: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawError {
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
}

/// The raw mirror of an event, read back from our own encoding so that both
/// sides hold exactly the same data.
fn raw(doc: &[u8]) -> RawEvent {
    serde_json::from_slice(doc).unwrap_or_else(|e| panic!("the corpus must be valid: {e}"))
}

fn encoded_corpus(events: &[ResourceLeaseReplicationEvent]) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|e| json::encode(e, version::V1).unwrap_or_default())
        .collect()
}

/// `json-encode`: events to reference JSON.
#[derive(Debug)]
pub struct JsonEncode {
    events: Vec<ResourceLeaseReplicationEvent>,
    raws: Vec<RawEvent>,
    buffer: Vec<u8>,
}

impl JsonEncode {
    /// Builds the corpus.
    pub fn new() -> Self {
        let events = corpus();
        let raws = encoded_corpus(&events).iter().map(|d| raw(d)).collect();
        Self {
            events,
            raws,
            buffer: Vec::with_capacity(1024),
        }
    }
}

impl Default for JsonEncode {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario for JsonEncode {
    fn name(&self) -> &'static str {
        "json-encode"
    }

    fn unit(&self) -> &'static str {
        "events"
    }

    fn baseline(&self) -> &'static str {
        "serde_json::to_writer of a derived struct"
    }

    fn target(&self) -> f64 {
        0.8
    }

    fn pass(&mut self, side: Side) -> u64 {
        match side {
            Side::Baseline => {
                for raw in &self.raws {
                    self.buffer.clear();
                    let _ = serde_json::to_writer(&mut self.buffer, black_box(raw));
                    black_box(&self.buffer);
                }
            }
            Side::Candidate => {
                for event in &self.events {
                    self.buffer.clear();
                    let _ = json::encode_into(black_box(event), version::V1, &mut self.buffer);
                    black_box(&self.buffer);
                }
            }
        }
        self.events.len() as u64
    }
}

/// `json-decode`: reference JSON to events.
#[derive(Debug)]
pub struct JsonDecode {
    docs: Vec<Vec<u8>>,
}

impl JsonDecode {
    /// Builds the corpus.
    pub fn new() -> Self {
        Self {
            docs: encoded_corpus(&corpus()),
        }
    }
}

impl Default for JsonDecode {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario for JsonDecode {
    fn name(&self) -> &'static str {
        "json-decode"
    }

    fn unit(&self) -> &'static str {
        "events"
    }

    fn baseline(&self) -> &'static str {
        "serde_json::from_slice into a derived struct"
    }

    fn target(&self) -> f64 {
        0.6
    }

    fn pass(&mut self, side: Side) -> u64 {
        for doc in &self.docs {
            match side {
                Side::Baseline => {
                    black_box(serde_json::from_slice::<RawEvent>(black_box(doc)).ok());
                }
                Side::Candidate => {
                    black_box(json::decode(black_box(doc)).ok());
                }
            }
        }
        self.docs.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_produce_the_same_documents() {
        let mut s = JsonEncode::new();
        for (event, raw) in s.events.iter().zip(&s.raws) {
            let ours = json::encode(event, version::V1).unwrap();
            s.buffer.clear();
            serde_json::to_writer(&mut s.buffer, raw).unwrap();
            assert_eq!(ours, s.buffer, "the baseline must do the same job");
        }
    }

    #[test]
    fn both_decode_sides_accept_every_document() {
        let s = JsonDecode::new();
        for doc in &s.docs {
            assert!(serde_json::from_slice::<RawEvent>(doc).is_ok());
            assert!(json::decode(doc).is_ok());
        }
    }
}
