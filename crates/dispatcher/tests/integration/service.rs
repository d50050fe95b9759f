//! The dispatcher on a real durable log: restarts, long polls, expiry,
//! a full queue, and what the log holds.

use std::time::Duration;

use omnirelay_dispatcher::{
    DispatchError, Dispatcher, DispatcherOptions, QueueOptions, QueueStats,
};
use omnirelay_replication::{DurableReplicator, Encoding, Replayed, StreamId};
use omnirelay_resourcelease::{ResourceLeaseReplicationEventType as Type, json};

use crate::support::{log as open_log, payload};

fn options(queue: QueueOptions) -> DispatcherOptions {
    DispatcherOptions {
        queue,
        ..DispatcherOptions::default()
    }
}

/// The stream as a version-1 (reference) reader sees it: types and peers.
async fn v1_view(
    replicator: &DurableReplicator<omnirelay_resourcelease::ResourceLeaseReplicationEvent>,
) -> Vec<(Type, Option<String>)> {
    replicator
        .replay(&StreamId::default(), 1, Encoding::JSON_V1)
        .await
        .unwrap()
        .filter_map(|item| match item.unwrap() {
            Replayed::Record(record) => {
                let event = json::decode(record.bytes()).unwrap();
                Some((event.event_type, event.peer_id))
            }
            Replayed::Skipped { .. } => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_dispatcher_has_the_same_pending_leased_and_dead_items() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let dispatcher = Dispatcher::open(log.clone(), options(QueueOptions::default()))
        .await
        .unwrap();
    for id in ["a", "b", "c", "d", "e"] {
        dispatcher
            .enqueue(payload(id), Some("seeder"))
            .await
            .unwrap();
    }
    let first = dispatcher.lease(Some("worker-1")).await.unwrap();
    let second = dispatcher.lease(Some("worker-2")).await.unwrap();
    let third = dispatcher.lease(None).await.unwrap();
    assert_eq!(third.owner, None);
    dispatcher.complete(&first.handle).await.unwrap();
    dispatcher
        .fail(
            &second.handle,
            Some("bad input"),
            Some("mesh.demo.failure"),
            false,
        )
        .await
        .unwrap();
    let before = dispatcher.snapshot().await;
    assert_eq!(before.pending_count(), 2);
    assert_eq!(before.active_count(), 1);
    assert_eq!(before.dead_letters().len(), 1);
    assert_eq!(
        v1_view(&log).await,
        vec![
            (Type::Enqueue, Some("seeder".to_owned())),
            (Type::Enqueue, Some("seeder".to_owned())),
            (Type::Enqueue, Some("seeder".to_owned())),
            (Type::Enqueue, Some("seeder".to_owned())),
            (Type::Enqueue, Some("seeder".to_owned())),
            (Type::LeaseGranted, Some("worker-1".to_owned())),
            (Type::LeaseGranted, Some("worker-2".to_owned())),
            (Type::LeaseGranted, None),
            (Type::Completed, Some("worker-1".to_owned())),
            (Type::Heartbeat, Some("worker-1".to_owned())),
            (Type::Failed, Some("worker-2".to_owned())),
        ],
        "the dead-lettering is a version-2 event, left out for version 1"
    );
    drop(dispatcher);
    log.close().await.unwrap();

    let log = open_log(dir.path()).await;
    let dispatcher = Dispatcher::open(log.clone(), options(QueueOptions::default()))
        .await
        .unwrap();
    assert_eq!(dispatcher.snapshot().await, before);
    assert_eq!(
        dispatcher.snapshot().await.fingerprint(),
        before.fingerprint()
    );
    // The lease held across the restart can still be completed.
    dispatcher.complete(&third.handle).await.unwrap();
    assert_ne!(
        dispatcher.snapshot().await.fingerprint(),
        before.fingerprint(),
        "a completion changes the fingerprint"
    );
    let next = dispatcher.lease(Some("worker-1")).await.unwrap();
    assert_eq!(next.item.payload.resource_id, "d");
    assert_eq!(next.item.sequence_id, 4);
    drop(dispatcher);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_waits_for_work_and_expired_leases_come_back_with_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let dispatcher = Dispatcher::open(
        log.clone(),
        options(QueueOptions {
            lease_duration: Duration::from_millis(300),
            sweep_interval: Duration::from_millis(50),
            ..QueueOptions::default()
        }),
    )
    .await
    .unwrap();
    let waiting = {
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move { dispatcher.lease(Some("worker-1")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "nothing to lease yet");
    dispatcher.enqueue(payload("a"), None).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.handle.attempt, 1);
    // No heartbeat: the sweep expires it, and a waiting worker gets it back.
    let again = tokio::time::timeout(Duration::from_secs(5), dispatcher.lease(Some("worker-2")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.handle.sequence_id, again.handle.attempt), (1, 2));
    assert_eq!(
        again.item.last_error.unwrap().code.as_deref(),
        Some("error.taskqueue.lease_expired")
    );
    // The first holder is fenced out.
    match dispatcher.complete(&first.handle).await {
        Err(DispatchError::Queue(e)) => assert_eq!(e.code, "error.taskqueue.lease_inactive"),
        other => panic!("{other:?}"),
    }
    let types: Vec<_> = log
        .replay(
            &StreamId::default(),
            1,
            Encoding::new(
                omnirelay_replication::Format::Json,
                omnirelay_replication::WireVersion::V2,
            ),
        )
        .await
        .unwrap()
        .map(|item| match item.unwrap() {
            Replayed::Record(record) => json::decode(record.bytes()).unwrap().event_type,
            Replayed::Skipped { .. } => panic!("version 2 holds every event"),
        })
        .collect();
    assert_eq!(
        types,
        vec![
            Type::Enqueue,
            Type::LeaseGranted,
            Type::LeaseExpired,
            Type::Requeued,
            Type::LeaseGranted
        ]
    );
    drop(dispatcher);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_makes_enqueue_wait_and_a_stopped_log_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let dispatcher = Dispatcher::open(
        log.clone(),
        options(QueueOptions {
            capacity: 1,
            ..QueueOptions::default()
        }),
    )
    .await
    .unwrap();
    dispatcher.enqueue(payload("a"), None).await.unwrap();
    let blocked = {
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move { dispatcher.enqueue(payload("b"), None).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!blocked.is_finished(), "the queue is full");
    let lease = dispatcher.lease(None).await.unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((stats.pending, stats.active), (1, 1));

    // Once the log is closed nothing can be made durable: refused, and the
    // queue is as it was.
    let before = dispatcher.snapshot().await;
    log.close().await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), dispatcher.complete(&lease.handle))
        .await
        .expect("complete on a closed log hung");
    assert!(
        matches!(refused, Err(DispatchError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(dispatcher.snapshot().await, before);
    let refused = tokio::time::timeout(Duration::from_secs(5), dispatcher.lease(None))
        .await
        .expect("lease on a closed log hung");
    assert!(
        matches!(refused, Err(DispatchError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(dispatcher.snapshot().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_holds_enqueuers_between_the_watermarks_and_never_stalls_them() {
    use omnirelay_dispatcher::BackpressureOptions;
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let dispatcher = Dispatcher::open(
        log.clone(),
        DispatcherOptions {
            queue: QueueOptions {
                sweep_interval: Duration::from_millis(50),
                ..QueueOptions::default()
            },
            backpressure: Some(BackpressureOptions {
                high_watermark: 3,
                low_watermark: Some(1),
                cooldown: Duration::from_millis(300),
            }),
            ..DispatcherOptions::default()
        },
    )
    .await
    .unwrap();
    let mut signals = dispatcher.backpressure_signals();
    for id in ["a", "b", "c"] {
        dispatcher.enqueue(payload(id), None).await.unwrap();
    }
    assert!(dispatcher.backpressure_active());
    let signal = signals.borrow_and_update().clone().unwrap();
    assert!(signal.is_active);
    assert_eq!(signal.pending_count, 3);
    let json = signal.to_json();
    assert_eq!(json["highWatermark"], 3);
    assert_eq!(json["lowWatermark"], 1);
    let blocked = {
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move { dispatcher.enqueue(payload("d"), None).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!blocked.is_finished(), "backpressure holds the enqueuer");
    // Down to the low watermark inside the cooldown: the transition waits
    // for the cooldown, then happens without any further traffic.
    dispatcher.lease(None).await.unwrap();
    dispatcher.lease(None).await.unwrap();
    assert!(dispatcher.backpressure_active(), "still in the cooldown");
    let stats = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("the enqueuer stalled after backpressure cleared")
        .unwrap()
        .unwrap();
    assert_eq!(stats.pending, 2);
    assert!(!dispatcher.backpressure_active());
    assert!(!signals.borrow_and_update().clone().unwrap().is_active);
    drop(dispatcher);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_health_follows_assignments_heartbeats_disconnects_and_reassignments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let dispatcher = Dispatcher::open(
        log.clone(),
        DispatcherOptions {
            peer_grace: Duration::from_millis(400),
            ..DispatcherOptions::default()
        },
    )
    .await
    .unwrap();
    for id in ["a", "b", "c"] {
        dispatcher.enqueue(payload(id), None).await.unwrap();
    }
    let one = dispatcher.lease(Some("worker-1")).await.unwrap();
    dispatcher.heartbeat(&one.handle).await.unwrap();
    dispatcher.complete(&one.handle).await.unwrap();
    let two = dispatcher.lease(Some("worker-2")).await.unwrap();
    dispatcher
        .fail(&two.handle, None, None, false)
        .await
        .unwrap();
    let three = dispatcher.lease(Some("worker-3")).await.unwrap();
    dispatcher
        .fail(&three.handle, None, None, true)
        .await
        .unwrap();
    let peer = |name: &str| {
        dispatcher
            .lease_health()
            .into_iter()
            .find(|p| p.peer == name)
            .unwrap()
    };
    assert!(peer("worker-1").healthy);
    assert!(
        !peer("worker-2").healthy,
        "failed without requeue: disconnected"
    );
    assert!(peer("worker-2").last_disconnect.is_some());
    assert_eq!(peer("worker-3").pending_reassignments, 1);
    assert_eq!(peer("worker-3").active_assignments, 0);
    // The requeued item leased again: no reassignment pending any more.
    let again = dispatcher.lease(Some("worker-1")).await.unwrap();
    assert_eq!(again.item.sequence_id, three.item.sequence_id);
    assert_eq!(peer("worker-3").pending_reassignments, 0);
    assert_eq!(peer("worker-1").active_assignments, 1);
    // Quiet past the grace period: unhealthy.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!peer("worker-3").healthy);
    drop(dispatcher);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_gone_for_the_forget_period_are_forgotten_unless_they_hold_something() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let dispatcher = Dispatcher::open(
        log.clone(),
        DispatcherOptions {
            peer_grace: Duration::from_millis(100),
            peer_forget: Duration::from_millis(300),
            ..DispatcherOptions::default()
        },
    )
    .await
    .unwrap();
    for id in ["a", "b", "c"] {
        dispatcher.enqueue(payload(id), None).await.unwrap();
    }
    let done = dispatcher.lease(Some("done")).await.unwrap();
    dispatcher.complete(&done.handle).await.unwrap();
    let holding = dispatcher.lease(Some("holding")).await.unwrap();
    let requeued = dispatcher.lease(Some("requeued")).await.unwrap();
    dispatcher
        .fail(&requeued.handle, None, None, true)
        .await
        .unwrap();
    let peers = |dispatcher: &Dispatcher| {
        let mut names: Vec<String> = dispatcher
            .lease_health()
            .into_iter()
            .map(|p| p.peer)
            .collect();
        names.sort();
        names
    };
    assert_eq!(peers(&dispatcher), ["done", "holding", "requeued"]);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        peers(&dispatcher),
        ["holding", "requeued"],
        "a lease held and a reassignment pending keep a peer listed"
    );
    dispatcher.complete(&holding.handle).await.unwrap();
    let again = dispatcher.lease(Some("new")).await.unwrap();
    assert_eq!(again.item.sequence_id, requeued.item.sequence_id);
    let health = dispatcher.lease_health();
    let holding = health.iter().find(|p| p.peer == "holding").unwrap();
    assert!(holding.healthy, "a completion is a sign of life");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(peers(&dispatcher), ["new"], "the new peer holds the lease");
    drop(dispatcher);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_given_up_while_waiting_takes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let dispatcher = Dispatcher::open(log.clone(), options(QueueOptions::default()))
        .await
        .unwrap();
    // A worker long-polls, then goes away (its request is cancelled).
    let waiting = {
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move { dispatcher.lease(Some("gone")).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    // The next item is not granted to the departed worker.
    dispatcher.enqueue(payload("a"), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = dispatcher.stats().await;
    assert_eq!((stats.pending, stats.active), (1, 0));
    let lease = dispatcher.lease(Some("here")).await.unwrap();
    assert_eq!(lease.owner.as_deref(), Some("here"));
    assert_eq!(
        v1_view(&log).await,
        vec![
            (Type::Enqueue, None),
            (Type::LeaseGranted, Some("here".to_owned()))
        ]
    );
    drop(dispatcher);
    log.close().await.unwrap();
}

/// A lease call with a deadline (the RPC's `Rpc-Ttl-Ms`) that grants an
/// item answers with it, however short the deadline: the deadline bounds
/// the wait for an item, not the grant being made durable (an `fsync`
/// here). Cut off at its deadline, the call could be dropped after the
/// grant, leaving the item leased to nobody until the lease expired (the
/// mesh demo once showed an item leased twice, 30 s apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_with_a_deadline_answers_every_item_it_granted() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let dispatcher = Dispatcher::open(log.clone(), options(QueueOptions::default()))
        .await
        .unwrap();
    for i in 0..20 {
        dispatcher
            .enqueue(payload(&format!("item-{i}")), None)
            .await
            .unwrap();
    }
    for i in 0..20 {
        let lease = dispatcher
            .lease_within(Some("worker"), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            lease.map(|l| l.item.payload.resource_id),
            Some(format!("item-{i}"))
        );
    }
    // Nothing left: the deadline passes, and nothing is granted.
    let none = dispatcher
        .lease_within(Some("worker"), Duration::from_millis(30))
        .await
        .unwrap();
    assert!(none.is_none());
    let stats = dispatcher.stats().await;
    assert_eq!((stats.pending, stats.active), (0, 20));
    let granted = v1_view(&log)
        .await
        .into_iter()
        .filter(|(kind, _)| *kind == Type::LeaseGranted)
        .count();
    assert_eq!(granted, 20);
    drop(dispatcher);
    log.close().await.unwrap();
}

/// An enqueue with a deadline (the RPC's `Rpc-Ttl-Ms`) waits for room —
/// a full queue, or backpressure holding enqueuers back — until the
/// deadline, and past it enqueues nothing; room that comes in time is
/// taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_with_a_deadline_waits_for_room_until_it_and_no_longer() {
    use omnirelay_dispatcher::BackpressureOptions;
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let dispatcher = Dispatcher::open(
        log.clone(),
        DispatcherOptions {
            queue: QueueOptions {
                capacity: 2,
                ..QueueOptions::default()
            },
            backpressure: Some(BackpressureOptions {
                high_watermark: 1,
                low_watermark: Some(0),
                cooldown: Duration::from_millis(1),
            }),
            ..DispatcherOptions::default()
        },
    )
    .await
    .unwrap();
    let enqueues = |log| async move {
        v1_view(log)
            .await
            .into_iter()
            .filter(|(kind, _)| *kind == Type::Enqueue)
            .count()
    };
    dispatcher.enqueue(payload("a"), None).await.unwrap();
    // Backpressure holds enqueuers back at one pending item.
    assert!(dispatcher.backpressure_active());
    let held = tokio::time::timeout(
        Duration::from_secs(5),
        dispatcher.enqueue_within(payload("b"), None, Duration::from_millis(50)),
    )
    .await
    .expect("the deadline did not end the wait")
    .unwrap();
    assert_eq!(held, None);
    // Without backpressure: a queue full at its capacity of one.
    let full = Dispatcher::open(
        open_log(&dir.path().join("full")).await,
        options(QueueOptions {
            capacity: 1,
            ..QueueOptions::default()
        }),
    )
    .await
    .unwrap();
    full.enqueue(payload("a"), None).await.unwrap();
    let started = tokio::time::Instant::now();
    let held = tokio::time::timeout(
        Duration::from_secs(5),
        full.enqueue_within(payload("b"), None, Duration::from_millis(50)),
    )
    .await
    .expect("the deadline did not end the wait")
    .unwrap();
    assert_eq!(held, None);
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(full.stats().await.pending, 1);
    // Room that comes before the deadline is taken.
    let waiting = {
        let full = full.clone();
        tokio::spawn(async move {
            full.enqueue_within(payload("c"), None, Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    let lease = full.lease(None).await.unwrap();
    full.complete(&lease.handle).await.unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the enqueue did not take the room")
        .unwrap()
        .unwrap();
    assert_eq!(stats.map(|s| s.pending), Some(1));
    // Nothing was enqueued past a deadline: one `Enqueue` on the first
    // dispatcher, two on the second (a, c).
    assert_eq!(enqueues(&log).await, 1);
    assert_eq!(dispatcher.stats().await.pending, 1);
    let pending: Vec<String> = full
        .snapshot()
        .await
        .pending()
        .map(|entry| entry.item.payload.resource_id.clone())
        .collect();
    assert_eq!(pending, ["c"]);
    drop((dispatcher, full));
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replication_off_the_queue_works_and_keeps_nothing() {
    let dispatcher = Dispatcher::unreplicated(options(QueueOptions::default())).unwrap();
    dispatcher.enqueue(payload("a"), None).await.unwrap();
    dispatcher.enqueue(payload("b"), None).await.unwrap();
    let lease = dispatcher.lease(Some("w")).await.unwrap();
    assert_eq!(lease.item.sequence_id, 1);
    dispatcher.complete(&lease.handle).await.unwrap();
    let stats = dispatcher.stats().await;
    assert_eq!((stats.pending, stats.active), (1, 0));
    assert!(
        dispatcher.complete(&lease.handle).await.is_err(),
        "fenced as ever"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_waits_stop_waiting_requests_are_answered_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let full_queue = QueueOptions {
        capacity: 1,
        ..QueueOptions::default()
    };
    let open = |name: &'static str| {
        let path = dir.path().join(name);
        let queue = full_queue.clone();
        async move {
            Dispatcher::open(open_log(&path).await, options(queue))
                .await
                .unwrap()
        }
    };
    // Two long polls on an empty queue, one with a deadline far off...
    let empty = open("empty").await;
    let polls = [None, Some(Duration::from_secs(60))].map(|within| {
        let empty = empty.clone();
        tokio::spawn(async move {
            match within {
                Some(within) => empty.lease_within(Some("w"), within).await.map(|_| ()),
                None => empty.lease(Some("w")).await.map(|_| ()),
            }
        })
    });
    // ... and an enqueuer held by a full queue.
    let full = open("full").await;
    full.enqueue(payload("a"), None).await.unwrap();
    let held = {
        let full = full.clone();
        tokio::spawn(async move { full.enqueue(payload("b"), None).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(polls.iter().all(|p| !p.is_finished()) && !held.is_finished());

    empty.stop_waits();
    full.stop_waits();
    for waiting in polls.into_iter().chain([held]) {
        let answered = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a waiting request was not answered")
            .unwrap();
        assert!(
            matches!(answered, Err(DispatchError::Stopping)),
            "{answered:?}"
        );
    }
    // Nothing changed for them.
    assert_eq!(
        (empty.stats().await, full.stats().await),
        (
            Default::default(),
            QueueStats {
                pending: 1,
                active: 0
            }
        )
    );
    // New waits are refused at once, with and without a deadline...
    let refused = empty.lease_within(Some("w"), Duration::from_secs(60)).await;
    assert!(
        matches!(refused, Err(DispatchError::Stopping)),
        "{refused:?}"
    );
    let refused = full.enqueue(payload("c"), None).await;
    assert!(
        matches!(refused, Err(DispatchError::Stopping)),
        "{refused:?}"
    );
    // ... while what needs no wait is served: an item there is leased and
    // completed, and one enqueued where there is room.
    let lease = full.lease(Some("w")).await.unwrap();
    full.complete(&lease.handle).await.unwrap();
    let refused = full.lease(Some("w")).await;
    assert!(
        matches!(refused, Err(DispatchError::Stopping)),
        "{refused:?}"
    );
    empty.enqueue(payload("d"), None).await.unwrap();
    let lease = empty.lease(None).await.unwrap();
    assert_eq!(lease.item.payload.resource_id, "d");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_checkpoints_retention_never_deletes_what_the_queue_is_rebuilt_from() {
    let dir = tempfile::tempdir().unwrap();
    let retention = omnirelay_replication::Retention {
        delete_consumed: true,
        max_bytes: Some(1),
        ..Default::default()
    };
    let log = crate::support::log_under(dir.path(), retention).await;
    let unchecked = || DispatcherOptions {
        checkpoint_interval: Duration::ZERO,
        ..options(QueueOptions::default())
    };
    let dispatcher = Dispatcher::open(log.clone(), unchecked()).await.unwrap();
    for i in 0..150 {
        dispatcher
            .enqueue(payload(&format!("r{i}")), Some("seeder"))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        dispatcher.lease(Some("worker")).await.unwrap();
    }
    // Retention runs at most every 500 ms: give it several chances.
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        dispatcher
            .enqueue(payload(&format!("late{i}")), Some("seeder"))
            .await
            .unwrap();
    }
    log.wait_caught_up().await;
    let stream = StreamId::default();
    assert!(omnirelay_replication_testkit::segments(dir.path(), &stream).len() > 5);
    // Before, retention deleted the sealed segments, and the restart below
    // folded what was left: 37 of 150 items pending, numbered from 1 again.
    assert_eq!(
        omnirelay_replication_testkit::oldest_record(dir.path(), &stream),
        1
    );
    let before = dispatcher.snapshot().await;
    assert_eq!(before.pending_count(), 155);
    drop(dispatcher);
    log.close().await.unwrap();

    let log = crate::support::log_under(dir.path(), retention).await;
    let dispatcher = Dispatcher::open(log.clone(), unchecked()).await.unwrap();
    assert_eq!(dispatcher.snapshot().await, before);
    let next = dispatcher.lease(Some("worker")).await.unwrap();
    assert_eq!(
        (
            next.item.sequence_id,
            next.item.payload.resource_id.as_str()
        ),
        (4, "r3")
    );
    drop(dispatcher);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_lost_its_first_events_is_refused_not_folded() {
    let dir = tempfile::tempdir().unwrap();
    let log =
        crate::support::log_under(dir.path(), omnirelay_replication::Retention::default()).await;
    let dispatcher = Dispatcher::open(log.clone(), options(QueueOptions::default()))
        .await
        .unwrap();
    for i in 0..100 {
        dispatcher
            .enqueue(payload(&format!("r{i}")), Some("seeder"))
            .await
            .unwrap();
    }
    drop(dispatcher);
    log.close().await.unwrap();
    let stream = StreamId::default();
    let segments = omnirelay_replication_testkit::segments(dir.path(), &stream);
    assert!(segments.len() > 2);
    std::fs::remove_file(&segments[0]).unwrap();
    let _ = std::fs::remove_file(segments[0].with_extension("idx"));
    let first = omnirelay_replication_testkit::oldest_record(dir.path(), &stream);
    assert!(first > 1);

    let log =
        crate::support::log_under(dir.path(), omnirelay_replication::Retention::default()).await;
    let err = Dispatcher::open(log.clone(), options(QueueOptions::default()))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        omnirelay_replication::ErrorKind::Corrupt,
        "{err}"
    );
    let gone = first - 1;
    assert!(
        err.to_string().contains(&format!(
            "the log of stream default begins at event {first}, not 1: events 1 to {gone} are gone"
        )),
        "{err}"
    );
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_begun_after_its_sinks_records_rebuilds_from_its_first_event() {
    let dir = tempfile::tempdir().unwrap();
    // The node's files were lost; its sink still holds events 1 to 20:
    // the log numbers after them, and the queue begins empty at 21.
    let open = || async {
        let log = crate::support::log(dir.path()).await;
        let sink = omnirelay_replication_testkit::FaultySink::new();
        sink.keep_checkpoint(20);
        log.add_sink(
            "kept",
            omnirelay_replication::SinkExt::shared(sink),
            omnirelay_replication::SinkOptions::default(),
        )
        .await
        .unwrap();
        log
    };
    let log = open().await;
    let dispatcher = Dispatcher::open(log.clone(), options(QueueOptions::default()))
        .await
        .unwrap();
    for id in ["a", "b", "c"] {
        dispatcher
            .enqueue(payload(id), Some("seeder"))
            .await
            .unwrap();
    }
    assert_eq!(log.last_sequence(&StreamId::default()), 23);
    let before = dispatcher.snapshot().await;
    drop(dispatcher);
    log.close().await.unwrap();

    let log = open().await;
    let dispatcher = Dispatcher::open(log.clone(), options(QueueOptions::default()))
        .await
        .unwrap();
    assert_eq!(dispatcher.snapshot().await, before);
    assert_eq!(dispatcher.stats().await.pending, 3);
    drop(dispatcher);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_the_queue_checkpoint_and_only_the_events_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let retention = omnirelay_replication::Retention {
        delete_consumed: true,
        max_bytes: Some(1),
        ..Default::default()
    };
    let checked = || DispatcherOptions {
        checkpoint_interval: Duration::from_millis(50),
        ..options(QueueOptions::default())
    };
    let log = crate::support::log_under(dir.path(), retention).await;
    let dispatcher = Dispatcher::open(log.clone(), checked()).await.unwrap();
    crate::support::varied_queue(&dispatcher).await;
    crate::support::trimmed(&dispatcher, dir.path()).await;
    let before = dispatcher.snapshot().await;
    assert!(!before.dead_letters().is_empty());
    drop(dispatcher);
    log.close().await.unwrap();

    let log = crate::support::log_under(dir.path(), retention).await;
    let dispatcher = Dispatcher::open(log.clone(), checked()).await.unwrap();
    assert_eq!(dispatcher.snapshot().await, before);
    // The leases held across the restart still work.
    let next = dispatcher.lease(Some("w4")).await.unwrap();
    dispatcher.complete(&next.handle).await.unwrap();
    drop(dispatcher);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_is_set_aside_and_the_whole_stream_folded() {
    let dir = tempfile::tempdir().unwrap();
    let checked = || DispatcherOptions {
        checkpoint_interval: Duration::from_millis(50),
        ..options(QueueOptions::default())
    };
    let log =
        crate::support::log_under(dir.path(), omnirelay_replication::Retention::default()).await;
    let dispatcher = Dispatcher::open(log.clone(), checked()).await.unwrap();
    crate::support::varied_queue(&dispatcher).await;
    crate::support::checkpointed(dir.path(), 1).await;
    let before = dispatcher.snapshot().await;
    drop(dispatcher);
    log.close().await.unwrap();
    let path = dir.path().join("dispatcher/default.queue.json");
    let saved = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &saved[..saved.len() / 2]).unwrap();

    let log =
        crate::support::log_under(dir.path(), omnirelay_replication::Retention::default()).await;
    let dispatcher = Dispatcher::open(log.clone(), checked()).await.unwrap();
    assert_eq!(dispatcher.snapshot().await, before);
    assert!(!path.exists(), "the damaged checkpoint was set aside");
    drop(dispatcher);
    log.close().await.unwrap();
}

/// A waiting lease is woken by what makes an item leasable — a requeue, a
/// redrive, a restore — and by a drain, which refuses it; not by every
/// change (idle workers long-polling are not all woken by each request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_leases_are_woken_by_requeues_redrives_restores_and_drains() {
    let dispatcher = Dispatcher::unreplicated(options(QueueOptions::default())).unwrap();
    let waiting = || {
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move { dispatcher.lease(Some("waiter")).await })
    };
    let answered = async |waiter: tokio::task::JoinHandle<Result<_, DispatchError>>| {
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a waiting lease was not woken")
            .unwrap()
    };
    let parked = async |waiter: &tokio::task::JoinHandle<_>| {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "nothing to lease yet");
    };

    dispatcher.enqueue(payload("a"), None).await.unwrap();
    let first = dispatcher.lease(Some("x")).await.unwrap();
    let waiter = waiting();
    parked(&waiter).await;
    dispatcher
        .fail(&first.handle, Some("again"), None, true)
        .await
        .unwrap();
    let again = answered(waiter).await.unwrap();
    assert_eq!(again.item.sequence_id, first.item.sequence_id);

    // Dead-lettered, then redriven.
    let waiter = waiting();
    parked(&waiter).await;
    dispatcher
        .fail(&again.handle, Some("gone"), None, false)
        .await
        .unwrap();
    parked(&waiter).await;
    dispatcher
        .redrive(&omnirelay_dispatcher::Selection::All, Some("operator"))
        .await
        .unwrap();
    let redriven = answered(waiter).await.unwrap();
    assert_eq!(redriven.item.sequence_id, first.item.sequence_id);

    // Restored while a lease waits.
    let waiter = waiting();
    parked(&waiter).await;
    let mut item = redriven.item.clone();
    item.sequence_id = 7;
    dispatcher
        .restore(vec![item], Some("operator"))
        .await
        .unwrap();
    assert_eq!(answered(waiter).await.unwrap().item.sequence_id, 7);

    // A drain refuses what waits.
    let waiter = waiting();
    parked(&waiter).await;
    dispatcher.complete(&redriven.handle).await.unwrap();
    parked(&waiter).await;
    dispatcher.drain().await.unwrap();
    let refused = answered(waiter).await.unwrap_err();
    assert!(
        matches!(&refused, DispatchError::Queue(e) if e.code == "error.taskqueue.disposed"),
        "{refused:?}"
    );
}

/// Each new item wakes one waiting lease, so a burst of items reaches as
/// many waiting leases, every item once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_items_reaches_every_waiting_lease() {
    let dispatcher = Dispatcher::unreplicated(options(QueueOptions::default())).unwrap();
    let waiters: Vec<_> = (0..32)
        .map(|w| {
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move {
                dispatcher
                    .lease_within(Some(&format!("w{w}")), Duration::from_secs(10))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move {
                for i in 0..8 {
                    dispatcher
                        .enqueue(payload(&format!("p{p}-{i}")), Some("producer"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    let mut leased = Vec::new();
    for waiter in waiters {
        let lease = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a waiting lease slept beside an item")
            .unwrap()
            .unwrap()
            .expect("every waiting lease gets an item");
        leased.push(lease.item.sequence_id);
    }
    leased.sort_unstable();
    assert_eq!(leased, (1..=32).collect::<Vec<_>>());
    assert_eq!(dispatcher.stats().await.pending, 0);
}

/// A waiting lease woken for an item and given up (its request dropped)
/// before it took it passes the item on to the next waiting lease.
#[tokio::test]
async fn a_woken_lease_given_up_passes_its_item_on() {
    /// Polls `lease` once: whether it answered.
    async fn ready_now<F: std::future::Future>(lease: &mut std::pin::Pin<Box<F>>) -> bool {
        std::future::poll_fn(|cx| std::task::Poll::Ready(lease.as_mut().poll(cx).is_ready())).await
    }
    let dispatcher = Dispatcher::unreplicated(options(QueueOptions::default())).unwrap();
    let mut first = Box::pin(dispatcher.lease(Some("first")));
    let mut second = Box::pin(dispatcher.lease(Some("second")));
    assert!(!ready_now(&mut first).await, "waiting");
    assert!(!ready_now(&mut second).await, "waiting");
    // Wakes one waiting lease, the one that waited longest.
    dispatcher.enqueue(payload("a"), None).await.unwrap();
    drop(first);
    let lease = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the item waited for the next change")
        .unwrap();
    assert_eq!(lease.item.sequence_id, 1);
    assert_eq!(lease.owner.as_deref(), Some("second"));
}
