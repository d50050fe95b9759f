//! A standby following a primary over gRPC `Subscribe`, then promoted.

use std::sync::Arc;
use std::time::Duration;

use omnirelay_dispatcher::{Dispatcher, DispatcherOptions, QueueOptions, Standby};
use omnirelay_replication::StreamId;
use omnirelay_replication_grpc::Connection;
use tokio::sync::watch;

use crate::support::{Log, log, payload};

/// Serves `log`'s `Subscribe` on a loopback port: the URL and the stop.
async fn serve(log: Log) -> (String, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = watch::channel(false);
    let routes = omnirelay_replication_grpc::routes(log, None, None, stopped.clone());
    let server = tokio::spawn(async move {
        let mut stopped = stopped;
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )
            .await
            .unwrap();
    });
    (url, stop, server)
}

async fn caught_up(standby: &Standby, through: u64) {
    for _ in 0..500 {
        if standby.status().applied >= through {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the standby never reached {through}: {:?}",
        standby.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_mirrors_the_primary_and_takes_over_with_its_queue() {
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary_log = log(primary_dir.path()).await;
    let options = DispatcherOptions {
        queue: QueueOptions {
            max_delivery_attempts: 2,
            ..QueueOptions::default()
        },
        ..DispatcherOptions::default()
    };
    let primary = Dispatcher::open(primary_log.clone(), options.clone())
        .await
        .unwrap();
    for id in ["a", "b", "c", "d"] {
        primary.enqueue(payload(id), Some("seeder")).await.unwrap();
    }
    let (url, stop, server) = serve(primary_log.clone()).await;
    // The standby starts behind and catches up, then follows live.
    let standby_log = log(standby_dir.path()).await;
    let standby = Standby::open(standby_log.clone(), options.clone(), Connection::new(url))
        .await
        .unwrap();
    let stream = StreamId::default();
    caught_up(&standby, 4).await;
    let first = primary.lease(Some("worker-1")).await.unwrap();
    let second = primary.lease(Some("worker-2")).await.unwrap();
    primary.complete(&first.handle).await.unwrap();
    primary
        .fail(&second.handle, Some("boom"), None, false)
        .await
        .unwrap();
    let held = primary.lease(Some("worker-3")).await.unwrap();
    let head = primary_log.last_sequence(&stream);
    caught_up(&standby, head).await;
    let status = standby.status();
    assert!(status.connected);
    assert_eq!((status.primary_head, status.lag_events()), (head, 0));
    assert_eq!(standby.snapshot().await, primary.snapshot().await);

    // The primary goes away; the standby is promoted with the same queue.
    let before = primary.snapshot().await;
    let _ = stop.send(true);
    server.await.unwrap();
    drop(primary);
    primary_log.close().await.unwrap();
    let dispatcher = standby.promote().await.unwrap();
    assert!(standby.status().promoted);
    assert_eq!(dispatcher.snapshot().await, before);
    assert_eq!(standby_log.last_sequence(&stream), head);
    // Work goes on: the lease held across the failover completes, the
    // pending item leases, and numbering continues after the primary's.
    dispatcher.complete(&held.handle).await.unwrap();
    let next = dispatcher.lease(Some("worker-1")).await.unwrap();
    assert_eq!(next.item.payload.resource_id, "d");
    assert_eq!(standby_log.last_sequence(&stream), head + 3);
    assert!(Arc::ptr_eq(&dispatcher, &standby.promote().await.unwrap()));
    drop(dispatcher);
    standby_log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_without_its_primary_says_so_and_reconnects() {
    let standby_dir = tempfile::tempdir().unwrap();
    let standby_log = log(standby_dir.path()).await;
    // Nothing listens there.
    let standby = Standby::open(
        standby_log.clone(),
        DispatcherOptions::default(),
        Connection::new("http://127.0.0.1:1"),
    )
    .await
    .unwrap();
    for _ in 0..200 {
        if standby.status().last_error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = standby.status();
    assert!(!status.connected);
    assert!(status.last_error.is_some(), "{status:?}");
    // Promoting without a primary serves what it has: an empty queue.
    let dispatcher = standby.promote().await.unwrap();
    assert_eq!(dispatcher.stats().await.pending, 0);
    drop(dispatcher);
    standby_log.close().await.unwrap();
}
