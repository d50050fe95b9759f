//! What the tests share: a work item and a durable log in a directory.

use std::sync::Arc;
use std::time::Duration;

use omnirelay_dispatcher::Dispatcher;

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

/// A log of small segments under `retention`, with a memory sink (which
/// passes every record, so that `delete_consumed` would take them all).
pub(crate) async fn log_under(
    dir: &std::path::Path,
    retention: omnirelay_replication::Retention,
) -> crate::support::Log {
    let log = crate::support::log_with(omnirelay_replication::DurableOptions {
        log: omnirelay_replication::LogOptions {
            // The writer thread wakes every 10 ms, retention with it.
            durability: omnirelay_replication::Durability::Interval(Duration::from_millis(10)),
            segment_max_bytes: 4096,
            retention,
            ..omnirelay_replication::LogOptions::default()
        },
        ..omnirelay_replication::DurableOptions::new(dir)
    })
    .await;
    log.add_sink(
        "memory",
        omnirelay_replication::SinkExt::shared(omnirelay_replication::MemorySink::new()),
        omnirelay_replication::SinkOptions::default(),
    )
    .await
    .unwrap();
    log
}

/// Operations that leave every kind of state behind: pending items (one
/// requeued with its error and last token, attributes, a request id),
/// leases with and without an owner, dead letters with and without an
/// error.
pub(crate) async fn varied_queue(dispatcher: &Dispatcher) {
    for i in 0..12 {
        let mut item = payload(&format!("r{i}"));
        item.request_id = Some(format!("request-{i}"));
        item.attributes = Some([("tenant", "a"), ("priority", "high")].into());
        item.body = vec![0, 159, 255, b'{', i];
        dispatcher.enqueue(item, Some("seeder")).await.unwrap();
    }
    let done = dispatcher.lease(Some("w1")).await.unwrap();
    dispatcher.complete(&done.handle).await.unwrap();
    let requeued = dispatcher.lease(Some("w2")).await.unwrap();
    dispatcher
        .fail(&requeued.handle, Some("try again"), Some("e.retry"), true)
        .await
        .unwrap();
    let dead = dispatcher.lease(Some("w1")).await.unwrap();
    dispatcher
        .fail(&dead.handle, Some("bad"), None, false)
        .await
        .unwrap();
    let beating = dispatcher.lease(Some("w3")).await.unwrap();
    dispatcher.heartbeat(&beating.handle).await.unwrap();
    dispatcher.lease(None).await.unwrap();
}

/// Enqueues 100 items on `dispatcher` (its log under `dir`, a
/// [`log_under`] with retention that deletes what its queue checkpoint
/// covers), waits for a checkpoint through at least the 100th event, then
/// enqueues more while retention (at most every 500 ms) deletes what the
/// checkpoint covers. Returns the log's oldest record, past 30.
pub(crate) async fn trimmed(dispatcher: &Dispatcher, dir: &std::path::Path) -> u64 {
    for i in 0..100 {
        dispatcher
            .enqueue(payload(&format!("bulk{i}")), None)
            .await
            .unwrap();
    }
    checkpointed(dir, 100).await;
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        dispatcher
            .enqueue(payload(&format!("late{i}")), None)
            .await
            .unwrap();
    }
    let stream = omnirelay_replication::StreamId::default();
    let oldest = omnirelay_replication_testkit::oldest_record(dir, &stream);
    assert!(oldest > 30, "retention deleted nothing: oldest {oldest}");
    oldest
}
