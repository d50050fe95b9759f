//! A standby following a primary over gRPC `Subscribe`, or fed its
//! stream as a sink, then promoted.

use std::sync::Arc;
use std::time::Duration;

use omnirelay_dispatcher::{
    DispatchError, Dispatcher, DispatcherOptions, FeedHolds, QueueOptions, Standby, StandbyFeed,
};
use omnirelay_replication::{
    DurableOptions, Encoding, ErrorKind, Format, LogOptions, OwnedRecord, Replayed, Sink as _,
    SinkError, StreamId, Timestamp, WireVersion,
};
use omnirelay_replication_grpc::Connection;
use tokio::sync::watch;

use crate::support::{Log, log, log_with, payload};

/// Serves `log`'s `Subscribe` on a loopback port: the URL and the stop.
async fn serve(log: Log) -> (String, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    serve_keeping(log, None).await
}

/// As [`serve`], with `Snapshot` serving the queue checkpoints under
/// `data_dir`, as a dispatcher node does.
async fn serve_keeping(
    log: Log,
    data_dir: Option<&std::path::Path>,
) -> (String, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = watch::channel(false);
    let mut streaming = omnirelay_replication_grpc::StreamingService::new(log, None);
    if let Some(dir) = data_dir {
        streaming = streaming.with_snapshots(Arc::new(
            omnirelay_dispatcher::checkpoint::Snapshots::new(dir),
        ));
    }
    let routes = omnirelay_replication_grpc::routes_with(streaming, None, None, stopped.clone());
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

/// A standby on `log` (the default options) following the primary at
/// `url`.
async fn following(log: Log, url: &str) -> Arc<Standby> {
    Standby::open(log, DispatcherOptions::default(), Connection::new(url))
        .await
        .unwrap()
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
    assert_eq!(
        (status.primary_head, status.lag_events()),
        (Some(head), Some(0))
    );
    assert_eq!(standby.snapshot().await, primary.snapshot().await);
    // While the primary serves, promoting would make two dispatchers of
    // one queue: refused, unless forced.
    let hazard = standby.promotion_hazard().unwrap_or_default();
    assert!(
        hazard.contains("still connected to its primary"),
        "{hazard}"
    );
    let refused = standby
        .promote_when_safe(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Rejected, "{refused}");
    assert!(!standby.status().promoted);

    // The primary goes away; the standby is promoted with the same queue.
    let before = primary.snapshot().await;
    let _ = stop.send(true);
    server.await.unwrap();
    drop(primary);
    primary_log.close().await.unwrap();
    let dispatcher = standby
        .promote_when_safe(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(standby.status().promoted);
    assert_eq!(standby.promotion_hazard(), None);
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
    // It never learned how far the primary's stream goes, so it cannot
    // tell what a promotion would lose: refused, and its lag is unknown
    // (not 0).
    assert_eq!((status.primary_head, status.lag_events()), (None, None));
    let refused = standby
        .promote_when_safe(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Rejected, "{refused}");
    for part in [
        "has not learned how far its primary's stream goes",
        "it cannot reach it:",
        "through sequence 0",
        "omnirelay promote --force",
    ] {
        assert!(refused.to_string().contains(part), "{part}: {refused}");
    }
    assert!(!standby.is_promoted());
    let waiting = tokio::spawn({
        let standby = standby.clone();
        async move { standby.wait_promoted().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "not promoted yet");
    // Forced, it serves what it has: an empty queue; its lag is 0 and its
    // failure to follow history.
    let dispatcher = standby.promote().await.unwrap();
    let status = standby.status();
    assert_eq!((status.lag_events(), status.last_error), (Some(0), None));
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("promotion ends the wait")
        .unwrap();
    // Once promoted, the wait ends at once.
    tokio::time::timeout(Duration::from_secs(1), standby.wait_promoted())
        .await
        .unwrap();
    assert_eq!(dispatcher.stats().await.pending, 0);
    drop(dispatcher);
    standby_log.close().await.unwrap();
}

/// Promoted by force while its primary still serves, a standby stops
/// following at once: it says it is not connected, and what the primary
/// writes after that does not reach its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_promoted_by_force_stops_following() {
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (primary_log, primary) = primary_with(primary_dir.path(), &["a", "b"]).await;
    let (url, stop, server) = serve(primary_log.clone()).await;
    let standby_log = log(standby_dir.path()).await;
    let standby = following(standby_log.clone(), &url).await;
    caught_up(&standby, 2).await;
    assert!(standby.status().connected);
    let dispatcher = standby.promote().await.unwrap();
    let status = standby.status();
    assert!(status.promoted && !status.connected, "{status:?}");
    assert_eq!(status.lag_events(), Some(0), "it serves the stream now");
    primary.enqueue(payload("c"), Some("seeder")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(standby_log.last_sequence(&StreamId::default()), 2);
    drop(dispatcher);
    let _ = stop.send(true);
    server.await.unwrap();
    drop(primary);
    primary_log.close().await.unwrap();
    standby_log.close().await.unwrap();
}

/// A standby stopped without being promoted follows no more, is freed
/// once its last handle is dropped (before, its follower kept it alive
/// until its log closed under it), and can still be promoted with what it
/// had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_stopped_following_is_let_go_and_can_still_be_promoted() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (primary_log, primary) = primary_with(dirs[0].path(), &["a", "b"]).await;
    let (url, stop, server) = serve(primary_log.clone()).await;

    let standby_log = log(dirs[1].path()).await;
    let standby = following(standby_log.clone(), &url).await;
    caught_up(&standby, 2).await;
    standby.stop_following().await;
    let status = standby.status();
    assert!(!status.connected && !status.promoted, "{status:?}");
    primary.enqueue(payload("c"), Some("seeder")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(standby_log.last_sequence(&StreamId::default()), 2);
    let dispatcher = standby.promote().await.unwrap();
    assert_eq!(dispatcher.stats().await.pending, 2);
    assert!(standby.is_promoted());
    drop(dispatcher);
    drop(standby);
    standby_log.close().await.unwrap();

    // Still subscribed, then stopped: nothing else holds it.
    let other_log = log(dirs[2].path()).await;
    let other = following(other_log.clone(), &url).await;
    caught_up(&other, 3).await;
    other.stop_following().await;
    let other_weak = Arc::downgrade(&other);
    drop(other);
    assert!(
        other_weak.upgrade().is_none(),
        "the stopped standby is still alive"
    );
    other_log.close().await.unwrap();

    let _ = stop.send(true);
    server.await.unwrap();
    drop(primary);
    primary_log.close().await.unwrap();
}

/// A node shutting down stops the waits of the dispatcher its standby
/// became, or becomes: a long poll does not keep it from stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_shutting_down_stops_the_waits_of_the_dispatcher_it_becomes() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (primary_log, primary) = primary_with(dirs[0].path(), &["a"]).await;
    let (url, stop, server) = serve(primary_log.clone()).await;
    let (first_log, second_log) = (log(dirs[1].path()).await, log(dirs[2].path()).await);
    let first = following(first_log.clone(), &url).await;
    let second = following(second_log.clone(), &url).await;
    caught_up(&first, 1).await;
    caught_up(&second, 1).await;
    // A promotion waiting until it is safe (its primary still serves) is
    // refused.
    let promoting = {
        let second = second.clone();
        tokio::spawn(async move { second.promote_when_safe(Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!promoting.is_finished());
    second.stop_waits();
    let refused = tokio::time::timeout(Duration::from_secs(5), promoting)
        .await
        .expect("a waiting promotion was not answered")
        .unwrap()
        .unwrap_err();
    assert!(
        refused.kind() == ErrorKind::Rejected
            && refused
                .message()
                .starts_with("not promoted: the standby is shutting down"),
        "{refused}"
    );
    assert!(!second.is_promoted());
    let _ = stop.send(true);
    server.await.unwrap();
    let long_poll = |dispatcher: Arc<Dispatcher>| async move {
        let waited = tokio::time::timeout(Duration::from_secs(5), dispatcher.lease(None)).await;
        assert!(
            matches!(waited, Ok(Err(DispatchError::Stopping))),
            "{waited:?}"
        );
    };
    // Promoted, then stopped: a poll waiting for an item is answered.
    let dispatcher = first.promote().await.unwrap();
    dispatcher.lease(None).await.unwrap();
    let polling = tokio::spawn(long_poll(dispatcher.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!polling.is_finished());
    first.stop_waits();
    polling.await.unwrap();
    // Stopped, then promoted: its dispatcher does not wait either.
    let dispatcher = second.promote().await.unwrap();
    dispatcher.lease(None).await.unwrap();
    long_poll(dispatcher).await;
    drop((first, second, primary));
    for log in [first_log, second_log, primary_log] {
        log.close().await.unwrap();
    }
}

/// The primary (its dispatcher, log, server stop and server) goes away:
/// `standby`, promoted once that is safe, serves the primary's last queue,
/// in which `held` is still leased.
async fn fail_over(
    standby: &Standby,
    primary: (
        Arc<Dispatcher>,
        Log,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ),
    held: &omnirelay_dispatcher::Lease,
) -> Arc<Dispatcher> {
    let (primary, primary_log, stop, server) = primary;
    let before = primary.snapshot().await;
    let _ = stop.send(true);
    server.await.unwrap();
    drop(primary);
    primary_log.close().await.unwrap();
    let dispatcher = standby
        .promote_when_safe(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(dispatcher.snapshot().await, before);
    dispatcher.complete(&held.handle).await.unwrap();
    dispatcher
}

/// Waits until `standby` reports a failure to follow; returns it.
async fn failure_of(standby: &Standby) -> String {
    for _ in 0..500 {
        if let Some(error) = standby.status().last_error {
            return error;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no failure: {:?}", standby.status());
}

/// A standby restarted on its log checks that its primary holds the same
/// event at its last sequence before it follows on: the same log resumes;
/// a log with other events (a former primary's tail that never reached
/// this primary), or one further along than the primary's stream, is not
/// followed (before, it followed on after its own last sequence, skipping
/// the primary's events there, and its queue diverged silently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_log_diverged_from_its_primarys_does_not_follow_it() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let stream = StreamId::default();
    let (primary_log, primary) = primary_with(dirs[0].path(), &["a", "b", "c"]).await;
    let (url, stop, server) = serve(primary_log.clone()).await;

    // The same log, restarted (its log closed under it, as a node's
    // shutdown does), resumes.
    let standby_log = log(dirs[1].path()).await;
    let standby = following(standby_log.clone(), &url).await;
    caught_up(&standby, 3).await;
    standby_log.close().await.unwrap();
    drop(standby);
    primary.enqueue(payload("d"), Some("seeder")).await.unwrap();
    let standby_log = log(dirs[1].path()).await;
    let standby = following(standby_log.clone(), &url).await;
    caught_up(&standby, 4).await;
    assert!(standby.is_log_checked());
    assert_eq!(standby.status().last_error, None);
    assert_eq!(standby.snapshot().await, primary.snapshot().await);
    drop(standby);
    standby_log.close().await.unwrap();

    // Another history under the same numbering.
    let (other_log, other) = primary_with(dirs[2].path(), &["x", "y"]).await;
    drop(other);
    let standby = following(other_log.clone(), &url).await;
    let error = failure_of(&standby).await;
    assert!(
        error.contains("its primary holds another event at sequence 2"),
        "{error}"
    );
    assert!(
        error.contains("start this standby on an empty data directory"),
        "{error}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(other_log.last_sequence(&stream), 2, "nothing followed");
    assert!(!standby.is_log_checked());
    let hazard = standby.promotion_hazard().unwrap_or_default();
    assert!(
        hazard.starts_with("its log is not a copy of its primary's stream")
            && hazard.contains("its primary holds another event at sequence 2"),
        "{hazard}"
    );
    // Promoted (forced), it serves its log: its sinks may start.
    standby.promote().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), standby.wait_log_checked())
        .await
        .unwrap();
    drop(standby);
    other_log.close().await.unwrap();

    // Further along than the primary's stream.
    let (ahead_log, ahead) = primary_with(dirs[3].path(), &["a", "b", "c", "d", "e", "f"]).await;
    drop(ahead);
    let standby = following(ahead_log.clone(), &url).await;
    let error = failure_of(&standby).await;
    assert!(
        error.contains("holds sequence 6, but its primary's stream ends at sequence 4"),
        "{error}"
    );
    drop(standby);
    ahead_log.close().await.unwrap();

    let _ = stop.send(true);
    server.await.unwrap();
    drop(primary);
    primary_log.close().await.unwrap();
}

/// A primary that no longer holds the standby's last event (retention
/// removed the segment it was in) cannot be checked against it: the
/// standby follows on after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_follows_a_primary_whose_retention_removed_its_last_event() {
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let stream = StreamId::default();
    let (fed, segments, first_of_second) = sixty_in_small_segments(primary_dir.path()).await;
    // The standby holds everything up to where the primary's second
    // segment starts; the primary's first segment goes, as retention
    // removes a segment.
    let last = usize::try_from(first_of_second - 1).unwrap();
    let standby_log = log(standby_dir.path()).await;
    let fed_standby = Standby::open_fed(
        standby_log.clone(),
        DispatcherOptions::default(),
        "seeded",
        Duration::ZERO,
    )
    .await
    .unwrap();
    apply(&fed_standby.feed(), &fed[..last]).await.unwrap();
    drop(fed_standby);
    standby_log.close().await.unwrap();
    std::fs::remove_file(&segments[0]).unwrap();

    let primary_log = log_with(small_segments(primary_dir.path())).await;
    let (url, stop, server) = serve(primary_log.clone()).await;
    let standby_log = log(standby_dir.path()).await;
    let standby = following(standby_log.clone(), &url).await;
    caught_up(&standby, 60).await;
    assert_eq!(standby_log.last_sequence(&stream), 60);
    let _ = stop.send(true);
    server.await.unwrap();
    drop(standby);
    primary_log.close().await.unwrap();
    standby_log.close().await.unwrap();
}

/// Log options for `dir` with segments of 2 000 bytes: sixty enqueues
/// fill several.
fn small_segments(dir: &std::path::Path) -> DurableOptions {
    DurableOptions {
        log: LogOptions {
            segment_max_bytes: 2_000,
            ..LogOptions::default()
        },
        ..DurableOptions::new(dir)
    }
}

/// A primary's log in `dir` ([`small_segments`]) with sixty enqueues,
/// closed: its records (protobuf, version 2), its segment files, and the
/// first sequence of the second.
async fn sixty_in_small_segments(
    dir: &std::path::Path,
) -> (Vec<OwnedRecord>, Vec<std::path::PathBuf>, u64) {
    let primary_log = log_with(small_segments(dir)).await;
    let primary = Dispatcher::open(primary_log.clone(), DispatcherOptions::default())
        .await
        .unwrap();
    for i in 0..60 {
        primary
            .enqueue(payload(&format!("item-{i}")), Some("seeder"))
            .await
            .unwrap();
    }
    drop(primary);
    let fed = records(
        &primary_log,
        Encoding::new(Format::Protobuf, WireVersion::V2),
    )
    .await;
    primary_log.close().await.unwrap();
    let segments = omnirelay_replication_testkit::segments(dir, &StreamId::default());
    assert!(segments.len() >= 3, "{segments:?}");
    let first_of_second = segments[1]
        .file_stem()
        .and_then(|stem| stem.to_str()?.parse().ok())
        .unwrap();
    (fed, segments, first_of_second)
}

/// A primary whose log holds a damaged record: the standby takes every
/// event before it, learns how far the stream goes, and cannot follow on;
/// a promotion would lose the rest and is refused, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_stopped_by_damage_in_its_primarys_log_knows_what_it_lacks() {
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let stream = StreamId::default();
    let (_, segments, first_of_second) = sixty_in_small_segments(primary_dir.path()).await;
    let hit = first_of_second + 2;
    omnirelay_replication_testkit::damage_record(&segments[1], hit);

    let primary_log = log_with(small_segments(primary_dir.path())).await;
    let head = primary_log.last_sequence(&stream);
    assert_eq!(head, 60);
    let (url, stop, server) = serve(primary_log.clone()).await;
    let standby_log = log(standby_dir.path()).await;
    let standby = following(standby_log.clone(), &url).await;
    caught_up(&standby, hit - 1).await;
    for _ in 0..500 {
        if standby.status().last_error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = standby.status();
    assert_eq!(status.applied, hit - 1, "{status:?}");
    assert_eq!(status.primary_head, Some(head), "{status:?}");
    assert_eq!(status.lag_events(), Some(head - hit + 1), "{status:?}");
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("damaged"), "{error}");
    let _ = stop.send(true);
    server.await.unwrap();
    let refused = standby
        .promote_when_safe(Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Rejected, "{refused}");
    let expected = format!(
        "through sequence {} of {head}: promoted now, it would lose the {} events",
        hit - 1,
        head - hit + 1
    );
    assert!(refused.to_string().contains(&expected), "{refused}");
    assert!(
        refused.to_string().contains("cannot follow on"),
        "{refused}"
    );
    primary_log.close().await.unwrap();
    standby_log.close().await.unwrap();
}

/// The primary's stream as a feed would carry it in `encoding` (without
/// the events it has no form for).
async fn records(log: &Log, encoding: Encoding) -> Vec<OwnedRecord> {
    log.replay(&StreamId::default(), 1, encoding)
        .await
        .unwrap()
        .filter_map(|item| match item.unwrap() {
            Replayed::Record(record) => Some(record),
            _ => None,
        })
        .collect()
}

async fn apply(feed: &StandbyFeed, records: &[OwnedRecord]) -> Result<(), SinkError> {
    let borrowed: Vec<_> = records.iter().map(OwnedRecord::as_record).collect();
    feed.apply(&borrowed).await
}

/// A dispatcher on a log of its own in `dir`, with `ids` enqueued.
async fn primary_with(dir: &std::path::Path, ids: &[&str]) -> (Log, Arc<Dispatcher>) {
    let primary_log = log(dir).await;
    let primary = Dispatcher::open(primary_log.clone(), DispatcherOptions::default())
        .await
        .unwrap();
    for id in ids {
        primary.enqueue(payload(id), Some("seeder")).await.unwrap();
    }
    (primary_log, primary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fed_standby_takes_the_stream_in_order_never_skips_and_stops_when_promoted() {
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let options = DispatcherOptions::default();
    let (primary_log, primary) = primary_with(primary_dir.path(), &["a", "b", "c", "d"]).await;
    let first = primary.lease(Some("worker-1")).await.unwrap();
    primary.complete(&first.handle).await.unwrap();
    let second = primary.lease(Some("worker-2")).await.unwrap();
    primary
        .fail(&second.handle, Some("boom"), None, true)
        .await
        .unwrap();
    let _held = primary.lease(Some("worker-3")).await.unwrap();
    let stream = StreamId::default();
    let head = primary_log.last_sequence(&stream);
    let v2 = Encoding::new(Format::Protobuf, WireVersion::V2);
    let fed = records(&primary_log, v2).await;
    assert_eq!(fed.len() as u64, head);

    let standby_log = log(standby_dir.path()).await;
    // A bus cannot show whether the primary serves: a promotion within
    // two seconds of its newest event is refused.
    let quiet = Duration::from_secs(2);
    let standby = Standby::open_fed(standby_log.clone(), options, "nats://bus", quiet)
        .await
        .unwrap();
    let feed = standby.feed();
    // Its checkpoint is its log's end; another stream's is never wanted.
    assert_eq!(feed.checkpoint(&stream).await.unwrap(), Some(0));
    let other = StreamId::new("other").unwrap();
    assert_eq!(feed.checkpoint(&other).await.unwrap(), Some(u64::MAX));
    apply(&feed, &fed[..3]).await.unwrap();
    // Redelivered records are ignored; the new ones follow.
    apply(&feed, &fed[..5]).await.unwrap();
    assert_eq!(standby.status().applied, 5);
    assert_eq!(standby_log.last_sequence(&stream), 5);
    // A gap is refused, retryably, with what came before it applied: the
    // standby never skips part of the stream.
    let gapped = [fed[5].clone(), fed[7].clone()];
    let refused = apply(&feed, &gapped).await.unwrap_err();
    assert!(refused.error().is_retryable(), "{refused}");
    assert_eq!(refused.applied_through_sequence(), Some(6));
    assert_eq!(standby_log.last_sequence(&stream), 6);
    let status = standby.status();
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("from sequence 6 to 8"), "{error}");
    assert!(error.contains("omnirelay deadletter list"), "{error}");
    // Only full fidelity will do.
    let v1 = records(&primary_log, Encoding::new(Format::Json, WireVersion::V1)).await;
    let next = v1.iter().position(|r| r.sequence() == 7).unwrap();
    let wrong = apply(&feed, &v1[next..=next]).await.unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::Config, "{wrong}");
    // Behind the stream as its source reports it, promoting would lose
    // what it has not applied: refused, unless forced.
    standby.report_upstream(false, Some(head), None);
    let refused = standby
        .promote_when_safe(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Rejected, "{refused}");
    let expected = format!(
        "through sequence 6 of {head}: promoted now, it would lose the {} events",
        head - 6
    );
    assert!(refused.to_string().contains(&expected), "{refused}");
    assert!(!standby.is_promoted());
    apply(&feed, &fed[6..]).await.unwrap();
    standby.report_upstream(true, Some(head), None);
    let status = standby.status();
    assert_eq!((status.applied, status.lag_events()), (head, Some(0)));
    assert!(
        status.connected && status.last_error.is_none(),
        "{status:?}"
    );
    assert_eq!(standby.snapshot().await, primary.snapshot().await);

    // Caught up, but the primary wrote its newest event just now: it may
    // still serve, so the promotion waits for the quiet period.
    let written = status.last_written.expect("the primary's newest event");
    assert_eq!(
        written,
        fed.last().unwrap().header().timestamp,
        "stamped by the primary's log"
    );
    let refused = standby.promote_when_safe(Duration::ZERO).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Rejected, "{refused}");
    assert!(
        refused
            .to_string()
            .contains(&format!("its primary wrote sequence {head}")),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("may still be serving"),
        "{refused}"
    );
    assert!(!standby.is_promoted());

    // Promoted, it serves that queue and takes nothing more from the feed.
    let before = primary.snapshot().await;
    let started = std::time::Instant::now();
    let dispatcher = standby
        .promote_when_safe(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        Timestamp::now().saturating_duration_since(written) >= quiet,
        "promoted only once the primary was quiet ({:?} after asking)",
        started.elapsed()
    );
    assert!(standby.is_promoted());
    assert_eq!(dispatcher.snapshot().await, before);
    primary.enqueue(payload("e"), Some("seeder")).await.unwrap();
    let late = records(&primary_log, v2).await;
    assert!(apply(&feed, &late[head as usize..]).await.is_err());
    assert_eq!(standby_log.last_sequence(&stream), head);
    drop((dispatcher, primary));
    primary_log.close().await.unwrap();
    standby_log.close().await.unwrap();
}

/// Restarted, a fed standby knows when its primary wrote the last event
/// in its log: a promotion right after a restart, before the feed brings
/// anything new, is as unsafe as one right before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_fed_standby_remembers_when_its_primary_last_wrote() {
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let options = DispatcherOptions::default();
    let (primary_log, primary) = primary_with(primary_dir.path(), &["a", "b"]).await;
    let fed = records(
        &primary_log,
        Encoding::new(Format::Protobuf, WireVersion::V2),
    )
    .await;
    let quiet = Duration::from_secs(3600);
    let standby_log = log(standby_dir.path()).await;
    let standby = Standby::open_fed(standby_log.clone(), options.clone(), "nats://bus", quiet)
        .await
        .unwrap();
    assert_eq!(standby.status().last_written, None, "nothing applied yet");
    apply(&standby.feed(), &fed).await.unwrap();
    drop(standby);
    standby_log.close().await.unwrap();

    let standby_log = log(standby_dir.path()).await;
    let standby = Standby::open_fed(standby_log.clone(), options, "nats://bus", quiet)
        .await
        .unwrap();
    let status = standby.status();
    assert_eq!(status.applied, 2);
    assert_eq!(status.last_written, Some(fed[1].header().timestamp));
    // Until its source says where the stream stands, that is unknown.
    let hazard = standby.promotion_hazard().unwrap_or_default();
    assert!(hazard.contains("has not learned how far"), "{hazard}");
    standby.report_upstream(true, Some(2), None);
    let hazard = standby.promotion_hazard().unwrap_or_default();
    assert!(hazard.contains("its primary wrote sequence 2"), "{hazard}");
    drop((standby, primary));
    standby_log.close().await.unwrap();
    primary_log.close().await.unwrap();
}

/// An hour before now: the clock of a primary whose clock runs behind.
fn an_hour_ago() -> Timestamp {
    Timestamp::from_unix_millis(Timestamp::now().unix_millis() - 3_600_000).unwrap()
}

/// A primary whose clock runs behind the standby's stamps its events in
/// the past, which the quiet period by its stamps cannot catch: once the
/// bus showed its stream grow, the standby waits out the quiet period by
/// its own clock. The backlog it found on starting shows nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fed_standby_waits_by_its_own_clock_for_a_primary_whose_clock_runs_behind() {
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary_log = log_with(omnirelay_replication::DurableOptions {
        clock: an_hour_ago,
        ..omnirelay_replication::DurableOptions::new(primary_dir.path())
    })
    .await;
    let primary = Dispatcher::open(primary_log.clone(), DispatcherOptions::default())
        .await
        .unwrap();
    for id in ["a", "b"] {
        primary.enqueue(payload(id), Some("seeder")).await.unwrap();
    }
    let v2 = Encoding::new(Format::Protobuf, WireVersion::V2);
    let fed = records(&primary_log, v2).await;
    let quiet = Duration::from_secs(2);
    let standby_log = log(standby_dir.path()).await;
    let standby = Standby::open_fed(
        standby_log.clone(),
        DispatcherOptions::default(),
        "nats://bus",
        quiet,
    )
    .await
    .unwrap();
    let feed = standby.feed();
    // Started behind a backlog: where the stream stands, then caught up.
    standby.report_upstream(true, Some(2), None);
    apply(&feed, &fed).await.unwrap();
    standby.report_upstream(true, Some(2), None);
    assert_eq!(
        standby.promotion_hazard(),
        None,
        "stamped an hour ago, and the stream did not grow while it watched"
    );

    // The primary writes on: the stream grows.
    primary.enqueue(payload("c"), Some("seeder")).await.unwrap();
    let fed = records(&primary_log, v2).await;
    apply(&feed, &fed[2..]).await.unwrap();
    let grew = std::time::Instant::now();
    standby.report_upstream(true, Some(3), None);
    let written = standby.status().last_written.unwrap();
    assert!(
        Timestamp::now().saturating_duration_since(written) > Duration::from_secs(3000),
        "stamped by the primary's clock, an hour behind"
    );
    let refused = standby.promote_when_safe(Duration::ZERO).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Rejected, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("the primary's stream grew to sequence 3"),
        "{refused}"
    );
    assert!(!standby.is_promoted());
    let dispatcher = standby
        .promote_when_safe(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        grew.elapsed() >= quiet,
        "promoted only {:?} after the stream grew",
        grew.elapsed()
    );
    assert_eq!(dispatcher.snapshot().await, primary.snapshot().await);
    drop((dispatcher, standby, primary));
    standby_log.close().await.unwrap();
    primary_log.close().await.unwrap();
}

/// A fed standby checks its source before it takes its feed, as a standby
/// following its primary does each time it subscribes: a log with the
/// source's event at its last sequence goes on; one with another event
/// there, or past the source's end, stops and refuses its feed (before, a
/// former primary restarted as a standby on the bus skipped the new
/// primary's events up to its own last sequence); what the source no
/// longer holds cannot be checked and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fed_standby_whose_log_diverged_from_its_source_does_not_take_its_feed() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let stream = StreamId::default();
    let v2 = Encoding::new(Format::Protobuf, WireVersion::V2);
    let (primary_log, primary) = primary_with(dirs[0].path(), &["a", "b", "c"]).await;
    let fed = records(&primary_log, v2).await;
    let event_at = |index: usize| {
        omnirelay_resourcelease::proto::decode(fed[index].bytes())
            .map(|event| FeedHolds::Event(Box::new(event)))
    };
    let fed_standby = async |log: Log| {
        Standby::open_fed(
            log,
            DispatcherOptions::default(),
            "nats://bus",
            Duration::ZERO,
        )
        .await
        .unwrap()
    };

    // A copy of the source's stream, restarted.
    let copy_log = log(dirs[1].path()).await;
    let copy = fed_standby(copy_log.clone()).await;
    assert!(copy.is_log_checked(), "an empty log is a copy");
    apply(&copy.feed(), &fed[..2]).await.unwrap();
    drop(copy);
    let copy = fed_standby(copy_log.clone()).await;
    assert!(!copy.is_log_checked());
    copy.check_feed(event_at(1).unwrap()).await.unwrap();
    assert!(copy.is_log_checked());
    copy.check_feed(FeedHolds::EndsAt(2)).await.unwrap();
    copy.check_feed(FeedHolds::Unknown("purged".into()))
        .await
        .unwrap();
    apply(&copy.feed(), &fed[2..]).await.unwrap();
    assert_eq!(copy.snapshot().await, primary.snapshot().await);
    assert_eq!(copy.status().last_error, None);

    // Another history under the same numbering: x, y, z at 1..=3.
    let (other_log, other) = primary_with(dirs[2].path(), &["x", "y", "z"]).await;
    drop(other);
    let diverged = fed_standby(other_log.clone()).await;
    let error = diverged.check_feed(event_at(2).unwrap()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Corrupt);
    assert!(error.to_string().contains("not a copy"), "{error}");
    let status = diverged.status();
    let shown = status.last_error.unwrap_or_default();
    assert!(
        shown.starts_with("stopped following")
            && shown.contains("its source holds another event at sequence 3"),
        "{shown}"
    );
    assert!(!status.connected);
    assert!(!diverged.is_log_checked());
    let hazard = diverged.promotion_hazard().unwrap_or_default();
    assert!(
        hazard.starts_with("its log is not a copy of its primary's stream"),
        "{hazard}"
    );
    let refused = apply(&diverged.feed(), &fed).await.unwrap_err();
    assert!(
        refused.to_string().contains("stopped following"),
        "{refused}"
    );
    assert_eq!(other_log.last_sequence(&stream), 3);

    // Further along than the source.
    let ahead_log = log(dirs[3].path()).await;
    let ahead = fed_standby(ahead_log.clone()).await;
    apply(&ahead.feed(), &fed).await.unwrap();
    let error = ahead.check_feed(FeedHolds::EndsAt(2)).await.unwrap_err();
    assert!(error.to_string().contains("ends at sequence 2"), "{error}");

    drop((copy, diverged, ahead, primary));
    for log in [primary_log, copy_log, other_log, ahead_log] {
        log.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_keeps_a_queue_checkpoint_and_restarts_and_promotes_from_it() {
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let options = DispatcherOptions {
        checkpoint_interval: Duration::from_millis(50),
        ..DispatcherOptions::default()
    };
    let primary_log = log(primary_dir.path()).await;
    let primary = Dispatcher::open(primary_log.clone(), options.clone())
        .await
        .unwrap();
    for i in 0..30 {
        primary
            .enqueue(payload(&format!("r{i}")), Some("seeder"))
            .await
            .unwrap();
    }
    let held = primary.lease(Some("worker-1")).await.unwrap();
    let done = primary.lease(Some("worker-2")).await.unwrap();
    primary.complete(&done.handle).await.unwrap();
    let (url, stop, server) = serve(primary_log.clone()).await;
    let stream = StreamId::default();
    let head = primary_log.last_sequence(&stream);
    let standby_log = log_with(small_segments(standby_dir.path())).await;
    let standby = Standby::open(
        standby_log.clone(),
        options.clone(),
        Connection::new(url.clone()),
    )
    .await
    .unwrap();
    caught_up(&standby, head).await;
    let through = crate::support::checkpointed(standby_dir.path(), 20).await;
    drop(standby);
    standby_log.close().await.unwrap();

    // Restarted, it starts from the checkpoint (nothing else in its log
    // would do: the segments it covers are gone) and follows on.
    let segments = omnirelay_replication_testkit::segments(standby_dir.path(), &stream);
    let first = |segment: &std::path::Path| -> u64 {
        segment
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut removed = 0;
    for pair in segments.windows(2) {
        // A segment's last event is the one before the next one's first.
        if first(&pair[1]) - 1 <= through {
            std::fs::remove_file(&pair[0]).unwrap();
            let _ = std::fs::remove_file(pair[0].with_extension("idx"));
            removed += 1;
        }
    }
    assert!(removed > 0, "{segments:?} through {through}");
    let standby_log = log_with(small_segments(standby_dir.path())).await;
    let standby = Standby::open(standby_log.clone(), options.clone(), Connection::new(url))
        .await
        .unwrap();
    assert_eq!(standby.snapshot().await, primary.snapshot().await);
    // A checkpoint waits for one event per 16 items of the queue.
    for i in 0..5 {
        primary
            .enqueue(payload(&format!("late{i}")), Some("seeder"))
            .await
            .unwrap();
    }
    let head = primary_log.last_sequence(&stream);
    caught_up(&standby, head).await;
    crate::support::checkpointed(standby_dir.path(), through + 1).await;
    let dispatcher = fail_over(&standby, (primary, primary_log, stop, server), &held).await;
    drop(dispatcher);
    standby_log.close().await.unwrap();
}

/// A new standby of a primary whose retention deleted the start of its
/// stream (what its queue checkpoint covers) begins from that checkpoint,
/// fetched over gRPC `Snapshot`: the same queue, followed on, across a
/// restart and a promotion. Without a checkpoint its log cannot be folded,
/// and a start says so rather than rebuilding a queue without the items
/// before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_standby_of_a_log_that_lost_its_start_begins_from_the_queue_checkpoint() {
    use crate::support::{log_under, trimmed, varied_queue};
    let (primary_dir, standby_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let stream = StreamId::default();
    let options = DispatcherOptions {
        checkpoint_interval: Duration::from_millis(50),
        ..DispatcherOptions::default()
    };
    let retention = omnirelay_replication::Retention {
        delete_consumed: true,
        max_bytes: Some(1),
        ..Default::default()
    };
    let primary_log = log_under(primary_dir.path(), retention).await;
    let primary = Dispatcher::open(primary_log.clone(), options.clone())
        .await
        .unwrap();
    varied_queue(&primary).await;
    let oldest = trimmed(&primary, primary_dir.path()).await;

    // Without `Snapshot`, a new standby cannot begin: it says why.
    let (url, stop, server) = serve(primary_log.clone()).await;
    let lone_dir = tempfile::tempdir().unwrap();
    let lone_log = log(lone_dir.path()).await;
    let lone = following(lone_log.clone(), &url).await;
    let why = failure_of(&lone).await;
    assert!(
        why.contains("no longer holds sequence 1")
            && why.contains("keeps no queue checkpoint to begin from"),
        "{why}"
    );
    assert_eq!(lone_log.last_sequence(&stream), 0);
    drop(lone);
    lone_log.close().await.unwrap();
    let _ = stop.send(true);
    server.await.unwrap();

    let (url, stop, server) = serve_keeping(primary_log.clone(), Some(primary_dir.path())).await;
    let standby_log = log(standby_dir.path()).await;
    let standby = Standby::open(
        standby_log.clone(),
        options.clone(),
        Connection::new(url.clone()),
    )
    .await
    .unwrap();
    caught_up(&standby, primary_log.last_sequence(&stream)).await;
    assert_eq!(standby.snapshot().await, primary.snapshot().await);
    let began = standby_log.started_after(&stream);
    assert!(
        (oldest - 1..=primary_log.last_sequence(&stream)).contains(&began),
        "{began}"
    );
    // A standby of this standby, whose log began after `began` and may
    // hold nothing yet, begins from its checkpoint the same way.
    let chain_dir = tempfile::tempdir().unwrap();
    let (standby_url, standby_stop, standby_server) =
        serve_keeping(standby_log.clone(), Some(standby_dir.path())).await;
    let chain_log = log(chain_dir.path()).await;
    let chain = Standby::open(
        chain_log.clone(),
        options.clone(),
        Connection::new(standby_url),
    )
    .await
    .unwrap();
    primary.enqueue(payload("chained"), None).await.unwrap();
    caught_up(&chain, primary_log.last_sequence(&stream)).await;
    assert_eq!(chain.snapshot().await, primary.snapshot().await);
    // From the standby's checkpoint: the one it began from, or one it
    // saved since.
    let chain_began = chain_log.started_after(&stream);
    assert!(
        (began..=primary_log.last_sequence(&stream)).contains(&chain_began),
        "{chain_began}, the standby began after {began}"
    );
    let _ = standby_stop.send(true);
    standby_server.await.unwrap();
    drop((chain, standby));
    chain_log.close().await.unwrap();
    standby_log.close().await.unwrap();

    // Restarted, it rebuilds from its copy of the checkpoint and follows on.
    let standby_log = log(standby_dir.path()).await;
    let standby = Standby::open(standby_log.clone(), options.clone(), Connection::new(url))
        .await
        .unwrap();
    let held = primary.lease(Some("worker-9")).await.unwrap();
    primary.enqueue(payload("after"), None).await.unwrap();
    caught_up(&standby, primary_log.last_sequence(&stream)).await;
    assert_eq!(standby.snapshot().await, primary.snapshot().await);
    let dispatcher = fail_over(&standby, (primary, primary_log, stop, server), &held).await;
    drop((dispatcher, standby));
    standby_log.close().await.unwrap();

    // Its checkpoint lost, the log cannot give the queue: refused.
    std::fs::remove_file(standby_dir.path().join("dispatcher/default.queue.json")).unwrap();
    let standby_log = log(standby_dir.path()).await;
    let refused = Dispatcher::open(standby_log.clone(), options)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Corrupt, "{refused}");
    assert!(
        refused.to_string().contains(&format!(
            "began after event {began}, from its primary's queue checkpoint"
        )),
        "{refused}"
    );
    standby_log.close().await.unwrap();
}
