//! A 3-node JetStream cluster with an R3 stream loses a member mid-stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::ConnectOptions;
use omnirelay_replication::{
    DurableOptions, DurableReplicator, Encoding, ReplicatorExt as _, RetryPolicy, SinkExt,
    SinkOptions,
};
use omnirelay_replication_nats::{
    DEFAULT_STREAM, NatsSink, NatsSinkOptions, NatsSource, NatsSourceOptions, StreamSettings,
};
use omnirelay_replication_testkit::FaultySink;
use omnirelay_resourcelease::{
    ResourceLeaseCodec, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType,
};

use crate::support::{Cluster, stored};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_an_r3_stream_survives_a_killed_member_with_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path());
    let urls = cluster.urls();
    let data = tempfile::tempdir().unwrap();
    let replicator = DurableReplicator::open(
        Arc::new(ResourceLeaseCodec),
        DurableOptions::new(data.path()),
    )
    .await
    .unwrap();
    let sink = NatsSink::connect(
        &urls,
        NatsSinkOptions {
            create: Some(StreamSettings {
                replicas: 3,
                ..StreamSettings::default()
            }),
            ack_timeout: Duration::from_secs(2),
            ..NatsSinkOptions::new()
        },
    )
    .await
    .unwrap();
    replicator
        .add_sink(
            "bus",
            sink.shared(),
            SinkOptions {
                retry: RetryPolicy {
                    initial: Duration::from_millis(100),
                    max: Duration::from_millis(500),
                    ..RetryPolicy::default()
                },
                ..SinkOptions::default()
            },
        )
        .await
        .unwrap();
    let publish = |range: std::ops::Range<usize>| {
        let replicator = &replicator;
        async move {
            for i in range {
                let mut event = ResourceLeaseReplicationEvent::new(
                    ResourceLeaseReplicationEventType::Heartbeat,
                );
                event.peer_id = Some(format!("worker-{}", i % 3));
                replicator.publish(event).await.unwrap();
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    };
    publish(0..150).await;
    // Kill the stream's leader: the hardest member to lose.
    let leader = {
        let client = async_nats::connect(&urls[0]).await.unwrap();
        let mut stream = async_nats::jetstream::new(client)
            .get_stream(DEFAULT_STREAM)
            .await
            .unwrap();
        let info = stream.info().await.unwrap();
        let name = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .unwrap();
        name.trim_start_matches('n').parse::<usize>().unwrap()
    };
    cluster.kill(leader);
    publish(150..300).await;
    cluster.restart(leader);
    publish(300..400).await;
    tokio::time::timeout(Duration::from_secs(90), replicator.wait_caught_up())
        .await
        .expect("the nats sink catches up");
    replicator.close().await.unwrap();

    let held = stored(&urls[0], DEFAULT_STREAM, "default").await;
    assert_eq!(
        held.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=400).collect::<Vec<_>>(),
        "every event exactly once in the stream"
    );

    // A replica fed by the source from the cluster.
    let replica = FaultySink::new();
    // The cluster may still be settling after the restart: creating the
    // consumer is retried, as a standby's connection to the bus is.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut source = loop {
        match NatsSource::connect(
            &urls,
            ConnectOptions::new(),
            Arc::new(ResourceLeaseCodec),
            NatsSourceOptions {
                wait: Duration::from_millis(300),
                ..NatsSourceOptions::new("replica")
            },
        )
        .await
        {
            Ok(source) => break source,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the source cannot start: {e}"),
        }
    };
    source.add_sink("replica", replica.clone().shared(), Encoding::JSON_V1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica.sequences().len() < 400 {
        assert!(
            Instant::now() < deadline,
            "the replica stalled at {}",
            replica.sequences().len()
        );
        source.poll().await.unwrap();
    }
    assert!(source.poll().await.unwrap().messages == 0);
    assert_eq!(
        replica.sequences(),
        (1..=400).collect::<Vec<_>>(),
        "every event exactly once in the replica"
    );
}
