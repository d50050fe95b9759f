//! The object-storage sink in segment layout against raw `object_store`
//! puts of the same bytes, on the local filesystem.

use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use omnirelay_replication::SinkExt;
use omnirelay_replication_objectstore::{Layout, ObjectSinkOptions, ObjectStoreSink, StoreConfig};

use crate::scenario::raw::{EVENT_BYTES, SinkSide, json_document};
use crate::scenario::{Scenario, Side};

/// Events per batch, and so per segment object.
const BATCH: usize = 512;

/// `objectstore-segment`: batches of 512 JSON events written by the
/// object-storage sink in segment layout (one create-only JSON-lines
/// object per batch, synced to disk, then its checkpoint object), against
/// `object_store` puts of the same bytes as one object per batch (not
/// synced, no checkpoint) — on the local filesystem. Reported with no
/// target: the ratio is the price of durability.
pub struct ObjectStoreSegments {
    runtime: tokio::runtime::Runtime,
    candidate: SinkSide,
    raw: Arc<dyn ObjectStore>,
    raw_next: u64,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for ObjectStoreSegments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreSegments")
            .finish_non_exhaustive()
    }
}

impl ObjectStoreSegments {
    /// Two local stores in a temporary directory.
    ///
    /// # Panics
    ///
    /// If the directory, runtime or stores cannot be created.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let runtime = crate::scenario::runtime();
        let open = |name: &str| {
            StoreConfig::Local {
                root: dir.path().join(name),
            }
            .open()
            .unwrap_or_else(|e| panic!("local store: {e}"))
        };
        let (store, sync_root) = open("sink");
        let options = ObjectSinkOptions {
            layout: Layout::Segment,
            content_type: false,
            sync_root,
            ..ObjectSinkOptions::new()
        };
        let sink = ObjectStoreSink::new(store, options)
            .unwrap_or_else(|e| panic!("object sink: {e}"))
            .shared();
        let (raw, _) = open("raw");
        Self {
            runtime,
            candidate: SinkSide::new(sink),
            raw,
            raw_next: 1,
            _dir: dir,
        }
    }
}

impl Default for ObjectStoreSegments {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario for ObjectStoreSegments {
    fn name(&self) -> &'static str {
        "objectstore-segment"
    }

    fn unit(&self) -> &'static str {
        "events"
    }

    fn baseline(&self) -> &'static str {
        "object_store puts of the same JSON lines, one object per 512 events, not synced"
    }

    fn target(&self) -> f64 {
        0.0
    }

    fn pass(&mut self, side: Side) -> u64 {
        match side {
            Side::Baseline => {
                let first = self.raw_next;
                let mut body = Vec::with_capacity(BATCH * (EVENT_BYTES + 1));
                for sequence in first..first + BATCH as u64 {
                    body.extend_from_slice(json_document(sequence).as_bytes());
                    body.push(b'\n');
                }
                let last = first + BATCH as u64 - 1;
                let path = ObjectPath::from(format!("resourcelease/{first:020}-{last:020}.jsonl"));
                self.runtime
                    .block_on(self.raw.put(&path, PutPayload::from(body)))
                    .unwrap_or_else(|e| panic!("raw put: {e}"));
                self.raw_next += BATCH as u64;
            }
            Side::Candidate => {
                self.candidate.pass(&self.runtime, BATCH);
            }
        }
        BATCH as u64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn both_sides_write_the_same_bytes() {
        let mut scenario = ObjectStoreSegments::new();
        scenario.pass(Side::Baseline);
        scenario.pass(Side::Candidate);
        let name = format!("resourcelease/{:020}-{:020}.jsonl", 1, BATCH);
        let dir = scenario._dir.path();
        let raw = std::fs::read(dir.join("raw").join(&name)).unwrap();
        let sink = std::fs::read(dir.join("sink").join(&name)).unwrap();
        assert_eq!(raw.len(), BATCH * (EVENT_BYTES + 1));
        assert_eq!(raw, sink);
    }
}
