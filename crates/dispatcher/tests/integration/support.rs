//! What the tests share: a work item and a durable log in a directory.

use std::sync::Arc;

use omnirelay_replication::{DurableOptions, DurableReplicator};
use omnirelay_resourcelease::{
    ResourceLeaseCodec, ResourceLeaseItemPayload as Payload, ResourceLeaseReplicationEvent,
};

/// A durable log of resource-lease events.
pub(crate) type Log = Arc<DurableReplicator<ResourceLeaseReplicationEvent>>;

/// A durable log in `dir` (the default options: `fsync`).
pub(crate) async fn log(dir: &std::path::Path) -> Log {
    log_with(DurableOptions::new(dir)).await
}

/// A durable log opened with `options`.
pub(crate) async fn log_with(options: DurableOptions) -> Log {
    Arc::new(
        DurableReplicator::open(Arc::new(ResourceLeaseCodec), options)
            .await
            .unwrap(),
    )
}

/// A valid work item about resource `id`.
pub(crate) fn payload(id: &str) -> Payload {
    Payload {
        resource_type: "lakehouse.catalog".to_owned(),
        resource_id: id.to_owned(),
        partition_key: "p".to_owned(),
        payload_encoding: "json".to_owned(),
        body: b"{}".to_vec(),
        attributes: None,
        request_id: None,
    }
}

/// Waits until the queue checkpoint under `dir` is through `at_least`;
/// the event it is through.
pub(crate) async fn checkpointed(dir: &std::path::Path, at_least: u64) -> u64 {
    let path = dir.join("dispatcher/default.queue.json");
    for _ in 0..200 {
        if let Ok(bytes) = std::fs::read(&path) {
            let file: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let through = file["through"].as_u64().unwrap();
            if through >= at_least {
                return through;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("no checkpoint through {at_least} at {}", path.display());
}
