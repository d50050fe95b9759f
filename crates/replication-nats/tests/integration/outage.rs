//! A NATS server that goes away during publishing stalls only its sink.

use std::sync::Arc;
use std::time::{Duration, Instant};

use omnirelay_replication::{
    DurableOptions, DurableReplicator, MemorySink, ReplicatorExt as _, RetryPolicy, SinkExt,
    SinkOptions,
};
use omnirelay_replication_nats::{DEFAULT_STREAM, NatsSink, NatsSinkOptions};
use omnirelay_resourcelease::{
    ResourceLeaseCodec, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType, json,
};

use crate::support::{Nats, stored};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_stopped_nats_server_stalls_only_its_sink_and_loses_nothing() {
    let store = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(store.path());
    let dir = tempfile::tempdir().unwrap();
    let replicator = DurableReplicator::open(
        Arc::new(ResourceLeaseCodec),
        DurableOptions::new(dir.path()),
    )
    .await
    .unwrap();
    let sink = NatsSink::connect(
        std::slice::from_ref(&nats.url),
        NatsSinkOptions {
            ack_timeout: Duration::from_millis(500),
            ..NatsSinkOptions::new()
        },
    )
    .await
    .unwrap();
    let retries = RetryPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(300),
        ..RetryPolicy::default()
    };
    replicator
        .add_sink(
            "bus",
            sink.clone().shared(),
            SinkOptions {
                retry: retries,
                ..SinkOptions::default()
            },
        )
        .await
        .unwrap();
    let memory = MemorySink::new();
    replicator
        .add_sink("memory", memory.clone().shared(), SinkOptions::default())
        .await
        .unwrap();
    let publish = |n: usize| {
        let replicator = &replicator;
        async move {
            for i in 0..n {
                let mut event = ResourceLeaseReplicationEvent::new(
                    ResourceLeaseReplicationEventType::Heartbeat,
                );
                event.peer_id = Some(format!("worker-{}", i % 3));
                replicator.publish(event).await.unwrap();
            }
        }
    };
    publish(100).await;
    tokio::time::timeout(Duration::from_secs(30), replicator.wait_caught_up())
        .await
        .unwrap();
    nats.kill();
    publish(100).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while memory.len() < 200 {
        assert!(Instant::now() < deadline, "the memory sink stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bus_retries = || async {
        replicator
            .sink_snapshots()
            .await
            .into_iter()
            .find(|s| s.sink == "bus")
            .unwrap()
            .retries
    };
    while bus_retries().await == 0 {
        assert!(Instant::now() < deadline, "the nats sink never retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nats.restart();
    publish(50).await;
    tokio::time::timeout(Duration::from_secs(60), replicator.wait_caught_up())
        .await
        .expect("the nats sink catches up");
    replicator.close().await.unwrap();

    let held = stored(&nats.url, DEFAULT_STREAM, "default").await;
    assert_eq!(
        held.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=250).collect::<Vec<_>>(),
        "every event exactly once, in order"
    );
    for (sequence, body) in &held {
        assert_eq!(
            json::decode(body).unwrap().sequence_number as u64,
            *sequence
        );
    }
    assert_eq!(memory.len(), 250);
}
