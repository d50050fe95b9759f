//! The lease queue as a fold: the reference's semantics, fencing, dead
//! letters, drain and restore, and the state rebuilt from its events.

use std::time::Duration;

use omnirelay_dispatcher::queue::{PURGE_ITEMS_PER_EVENT, Selection, codes, keys};
use omnirelay_dispatcher::{ErrorStatus, QueueOptions, QueueState};
use omnirelay_replication::{Timestamp, WireVersion};
use omnirelay_resourcelease::{
    ResourceLeaseItemPayload as Payload, ResourceLeaseOwnershipHandle as Handle,
    ResourceLeaseReplicationEvent as Event, ResourceLeaseReplicationEventType as Type, json,
};
use proptest::prelude::*;

use crate::support::payload;

/// A queue with a clock and the log a dispatcher would write: decided
/// events are numbered and stamped as the replicator does, then applied.
struct Sim {
    state: QueueState,
    options: QueueOptions,
    log: Vec<Event>,
    now: Timestamp,
}

impl Sim {
    fn new() -> Self {
        Self::with(QueueOptions::default())
    }

    fn with(options: QueueOptions) -> Self {
        Self {
            state: QueueState::new(),
            options,
            log: Vec::new(),
            now: Timestamp::parse("2026-11-28T09:00:00Z").unwrap(),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now = Timestamp::from_ticks(self.now.ticks() + (by.as_nanos() / 100) as i64).unwrap();
    }

    /// Stamps, logs and applies `events`; checks the last one's counts.
    fn commit(&mut self, mut events: Vec<Event>) -> Vec<Event> {
        for event in &mut events {
            event.sequence_number = self.log.len() as i64 + 1;
            event.timestamp = self.now;
            self.state.apply(event, &self.options).unwrap();
            self.log.push(event.clone());
        }
        if let Some(last) = events.last() {
            assert_eq!(
                last.metadata.get(keys::PENDING),
                Some(self.state.pending_count().to_string().as_str()),
                "{last:?}"
            );
            assert_eq!(
                last.metadata.get(keys::ACTIVE),
                Some(self.state.active_count().to_string().as_str())
            );
        }
        events
    }

    fn enqueue(&mut self, id: &str) {
        let decided = self
            .state
            .decide_enqueue(payload(id), Some("seeder"), &self.options)
            .unwrap();
        self.commit(decided);
    }

    fn lease(&mut self, peer: &str) -> Option<(Handle, Event)> {
        let decided = self.state.decide_lease(Some(peer), self.now).unwrap()?;
        let event = self.commit(decided).remove(0);
        Some((event.ownership.unwrap(), event))
    }

    fn complete(&mut self, handle: &Handle) -> Vec<Event> {
        let decided = self.state.decide_complete(handle).unwrap();
        self.commit(decided)
    }

    fn fail(&mut self, handle: &Handle, requeue: bool) -> Vec<Event> {
        let decided = self
            .state
            .decide_fail(
                handle,
                Some("boom"),
                Some("mesh.demo.failure"),
                requeue,
                &self.options,
            )
            .unwrap();
        self.commit(decided)
    }

    fn sweep(&mut self) -> Vec<Event> {
        let decided = self.state.decide_sweep(self.now, &self.options);
        self.commit(decided)
    }

    /// The state rebuilt from the log alone.
    fn replayed(&self) -> QueueState {
        let mut state = QueueState::new();
        for event in &self.log {
            state.apply(event, &self.options).unwrap();
        }
        state
    }

    fn types(events: &[Event]) -> Vec<Type> {
        events.iter().map(|e| e.event_type).collect()
    }
}

#[test]
fn a_completed_item_gives_the_reference_events_in_order() {
    let mut sim = Sim::new();
    sim.enqueue("a");
    let (handle, granted) = sim.lease("worker-1").unwrap();
    assert_eq!((handle.sequence_id, handle.attempt), (1, 1));
    assert_eq!(granted.peer_id.as_deref(), Some("worker-1"));
    assert_eq!(granted.error, None);
    let done = sim.complete(&handle);
    assert_eq!(Sim::types(&done), vec![Type::Completed, Type::Heartbeat]);
    assert!(
        done.iter()
            .all(|e| e.peer_id.as_deref() == Some("worker-1"))
    );
    assert_eq!(done[1].payload, None, "the heartbeat carries no payload");
    assert_eq!(
        Sim::types(&sim.log),
        vec![
            Type::Enqueue,
            Type::LeaseGranted,
            Type::Completed,
            Type::Heartbeat
        ]
    );
    // The enqueue's payload is normalised as the reference writes it.
    assert_eq!(
        sim.log[0].payload.as_ref().unwrap().attributes,
        Some(Default::default())
    );
    assert_eq!(sim.log[0].metadata.get(keys::PENDING), Some("1"));
    assert_eq!(sim.state.pending_count() + sim.state.active_count(), 0);
}

#[test]
fn failures_requeue_with_the_next_attempt_until_the_last_then_dead_letter() {
    let mut sim = Sim::with(QueueOptions {
        max_delivery_attempts: 3,
        ..QueueOptions::default()
    });
    sim.enqueue("a");
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let (handle, granted) = sim.lease("worker-1").unwrap();
        attempts.push(handle.attempt);
        if handle.attempt > 1 {
            let error = granted.error.as_ref().unwrap();
            assert_eq!(error.code.as_deref(), Some("mesh.demo.failure"));
        }
        let failed = sim.fail(&handle, true);
        assert_eq!(failed[0].event_type, Type::Failed);
        assert_eq!(failed[0].metadata.get(keys::REQUEUED), Some("True"));
        let expected = if handle.attempt < 3 {
            Type::Requeued
        } else {
            Type::DeadLettered
        };
        assert_eq!(failed[1].event_type, expected);
        assert_eq!(failed[1].items[0].sequence_id, 1, "the sequence id is kept");
    }
    assert_eq!(attempts, vec![1, 2, 3]);
    assert!(sim.lease("worker-1").is_none());
    let dead = sim.state.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].item.attempt, 3);
    assert_eq!(dead[0].error.as_ref().unwrap().message, "boom");
    // Failing without requeue dead-letters at once; the flag says False.
    sim.enqueue("b");
    let (handle, _) = sim.lease("worker-2").unwrap();
    let failed = sim.fail(&handle, false);
    assert_eq!(failed[0].metadata.get(keys::REQUEUED), Some("False"));
    assert_eq!(failed[1].event_type, Type::DeadLettered);
    assert_eq!(sim.state.dead_letters().len(), 2);
    assert_eq!(sim.replayed(), sim.state);
}

#[test]
fn an_expired_lease_is_requeued_and_its_token_is_fenced() {
    let mut sim = Sim::new();
    sim.enqueue("a");
    let (old, _) = sim.lease("worker-1").unwrap();
    sim.advance(Duration::from_secs(29));
    assert!(sim.sweep().is_empty(), "not yet");
    sim.advance(Duration::from_secs(1));
    let expired = sim.sweep();
    assert_eq!(
        Sim::types(&expired),
        vec![Type::LeaseExpired, Type::Requeued]
    );
    assert_eq!(
        expired[0].error.as_ref().unwrap().code.as_deref(),
        Some(codes::LEASE_EXPIRED)
    );
    let (new, granted) = sim.lease("worker-2").unwrap();
    assert_eq!((new.sequence_id, new.attempt), (1, 2));
    assert_ne!(new.lease_id, old.lease_id);
    assert_eq!(
        granted.error.unwrap().code.as_deref(),
        Some(codes::LEASE_EXPIRED)
    );
    // The old holder can neither complete, fail nor heartbeat.
    for refused in [
        sim.state.decide_complete(&old).unwrap_err(),
        sim.state
            .decide_fail(&old, None, None, true, &sim.options)
            .unwrap_err(),
        sim.state
            .clone()
            .heartbeat(&old, sim.now, &sim.options)
            .unwrap_err(),
    ] {
        assert_eq!(refused.code, codes::LEASE_INACTIVE);
        assert_eq!(refused.status, ErrorStatus::FailedPrecondition);
    }
    // A token this queue never issued is unknown.
    let stranger = Handle {
        sequence_id: 99,
        attempt: 1,
        lease_id: uuid::Uuid::new_v4(),
    };
    let refused = sim.state.decide_complete(&stranger).unwrap_err();
    assert_eq!(
        (refused.code, refused.status),
        (codes::UNKNOWN_TOKEN, ErrorStatus::NotFound)
    );
    // A forged attempt on the current lease id is refused too.
    let forged = Handle { attempt: 1, ..new };
    assert_eq!(
        sim.state.decide_complete(&forged).unwrap_err().code,
        codes::LEASE_INACTIVE
    );
    sim.complete(&new);
    // Completed, the item is gone: its token is unknown, as the
    // reference's dispatcher forgets it.
    assert_eq!(
        sim.state.decide_complete(&new).unwrap_err().code,
        codes::UNKNOWN_TOKEN
    );
    assert_eq!(sim.replayed(), sim.state);
}

#[test]
fn a_heartbeat_inside_the_interval_does_not_extend_the_lease() {
    let mut sim = Sim::new();
    sim.enqueue("a");
    let (handle, _) = sim.lease("worker-1").unwrap();
    let granted_expiry = sim.state.lease(&handle).unwrap().expires_at;
    sim.advance(Duration::from_secs(4));
    let options = sim.options.clone();
    assert!(!sim.state.heartbeat(&handle, sim.now, &options).unwrap());
    assert_eq!(sim.state.lease(&handle).unwrap().expires_at, granted_expiry);
    sim.advance(Duration::from_secs(1));
    assert!(sim.state.heartbeat(&handle, sim.now, &options).unwrap());
    // Extended to 5 s + 30 s: a sweep at the original expiry leaves it.
    sim.advance(Duration::from_secs(25));
    assert!(sim.sweep().is_empty());
    sim.advance(Duration::from_secs(5));
    assert_eq!(sim.sweep().len(), 2);
}

#[test]
fn drain_hands_out_the_pending_items_and_restore_elsewhere_keeps_them() {
    let mut primary = Sim::new();
    for id in ["a", "b", "c"] {
        primary.enqueue(id);
    }
    let (handle, _) = primary.lease("worker-1").unwrap();
    primary.fail(&handle, true);
    let drained = primary
        .commit(primary.state.decide_drain().unwrap())
        .remove(0);
    assert_eq!(drained.peer_id, None, "the reference's drain has no peer");
    assert_eq!(drained.metadata.get(keys::DRAIN_COUNT), Some("3"));
    let items = drained.items.clone();
    assert_eq!(
        items
            .iter()
            .map(|i| (i.sequence_id, i.attempt))
            .collect::<Vec<_>>(),
        vec![(2, 1), (3, 1), (1, 2)]
    );
    // Drained, the queue takes no new work.
    let refused = primary
        .state
        .decide_enqueue(payload("d"), None, &primary.options)
        .unwrap_err();
    assert_eq!(refused.code, codes::DISPOSED);
    assert_eq!(
        primary
            .state
            .decide_lease(None, primary.now)
            .unwrap_err()
            .code,
        codes::DISPOSED
    );

    let mut other = Sim::new();
    other.enqueue("x");
    // Item 1 collides with the item this queue already has: refused whole.
    let clash = other.state.decide_restore(items.clone(), None).unwrap_err();
    assert_eq!(clash.code, codes::PENDING_ITEM_INVALID);
    assert!(clash.message.contains("sequenceId 1"), "{}", clash.message);
    // So does an item named twice in one restore.
    let twice = vec![items[1].clone(), items[0].clone(), items[1].clone()];
    let clash = Sim::new().state.decide_restore(twice, None).unwrap_err();
    assert_eq!(clash.code, codes::PENDING_ITEM_INVALID);
    assert_eq!(
        clash.message,
        format!(
            "items[2]: sequenceId {} is already in the queue",
            items[1].sequence_id
        )
    );
    let restored = other
        .commit(
            other
                .state
                .decide_restore(items[..2].to_vec(), Some("operator"))
                .unwrap(),
        )
        .remove(0);
    assert_eq!(restored.peer_id.as_deref(), Some("operator"));
    assert_eq!(restored.metadata.get(keys::RESTORE_COUNT), Some("2"));
    assert_eq!(other.state.pending_count(), 3);
    // Sequence ids go on after the largest restored.
    other.enqueue("y");
    assert_eq!(other.state.last_sequence_id(), 4);
    // An item without a last error gets the reference's placeholder.
    let mut fresh = items[2].clone();
    fresh.sequence_id = 10;
    fresh.last_error = None;
    let event = other
        .state
        .decide_restore(vec![fresh], None)
        .unwrap()
        .remove(0);
    assert_eq!(
        event.items[0].last_error.as_ref().unwrap().code.as_deref(),
        Some(codes::UNSPECIFIED)
    );
    assert!(
        other
            .state
            .decide_restore(Vec::new(), None)
            .unwrap()
            .is_empty()
    );
    assert_eq!(other.replayed(), other.state);
}

#[test]
fn a_restored_largest_sequence_id_leaves_no_room_and_enqueue_says_so() {
    let mut sim = Sim::new();
    sim.enqueue("a");
    let mut last = (*sim.state.pending().next().unwrap().item).clone();
    last.sequence_id = i64::MAX;
    sim.commit(sim.state.decide_restore(vec![last], None).unwrap());
    // The reference's counter wraps: the next item would get a negative
    // id no restore takes back. Refused instead, the queue unchanged.
    let refused = sim
        .state
        .decide_enqueue(payload("b"), None, &sim.options)
        .unwrap_err();
    assert_eq!(
        (refused.code, refused.status),
        (codes::SEQUENCE_EXHAUSTED, ErrorStatus::FailedPrecondition)
    );
    assert!(
        refused.message.contains("9223372036854775807"),
        "{}",
        refused.message
    );
    assert_eq!(sim.state.pending_count(), 2);
    // Leases and completions go on.
    let (handle, _) = sim.lease("worker").unwrap();
    sim.complete(&handle);
    assert_eq!(sim.replayed(), sim.state);
    // A stream that enqueues past it anyway (the reference's, or ours
    // before the refusal) folds as it was served: wrapped.
    let mut stream = sim.log.clone();
    let mut wrapped = stream[0].clone();
    wrapped.sequence_number = stream.len() as i64 + 1;
    stream.push(wrapped);
    let mut state = QueueState::new();
    for event in &stream {
        state.apply(event, &sim.options).unwrap();
    }
    assert_eq!(state.last_sequence_id(), i64::MIN);
}

#[test]
fn invalid_payloads_are_refused_with_the_reference_codes() {
    let sim = Sim::new();
    for (change, code) in [
        (
            (|p: &mut Payload| p.resource_type = "  ".to_owned()) as fn(&mut Payload),
            codes::RESOURCE_TYPE_REQUIRED,
        ),
        (|p| p.resource_id.clear(), codes::RESOURCE_ID_REQUIRED),
        (|p| p.partition_key.clear(), codes::PARTITION_KEY_REQUIRED),
        (|p| p.payload_encoding.clear(), codes::ENCODING_REQUIRED),
    ] {
        let mut bad = payload("a");
        change(&mut bad);
        let err = sim
            .state
            .decide_enqueue(bad, None, &sim.options)
            .unwrap_err();
        assert_eq!((err.code, err.status), (code, ErrorStatus::InvalidArgument));
    }
    let full = Sim::with(QueueOptions {
        capacity: 0,
        ..QueueOptions::default()
    });
    let err = full
        .state
        .decide_enqueue(payload("a"), None, &full.options)
        .unwrap_err();
    assert_eq!(err.status, ErrorStatus::ResourceExhausted);
}

#[test]
fn a_version_1_reader_sees_only_the_reference_events() {
    let mut sim = Sim::with(QueueOptions {
        max_delivery_attempts: 2,
        ..QueueOptions::default()
    });
    sim.enqueue("a");
    let (handle, _) = sim.lease("w").unwrap();
    sim.fail(&handle, true);
    sim.advance(Duration::from_secs(1));
    let (handle, _) = sim.lease("w").unwrap();
    sim.advance(Duration::from_secs(31));
    sim.sweep();
    let v1: Vec<Type> = sim
        .log
        .iter()
        .filter(|e| json::encode(e, WireVersion::V1).is_ok())
        .map(|e| e.event_type)
        .collect();
    assert_eq!(
        v1,
        vec![
            Type::Enqueue,
            Type::LeaseGranted,
            Type::Failed,
            Type::LeaseGranted
        ]
    );
    assert_eq!(
        sim.state.dead_letters()[0].item.last_ownership_token,
        Some(handle)
    );
    let drained = sim.state.decide_drain().unwrap().remove(0);
    let text = String::from_utf8(json::encode(&drained, WireVersion::V1).unwrap()).unwrap();
    assert!(!text.contains("items"), "{text}");
}

#[test]
fn dead_letters_are_redriven_with_fresh_attempts_and_leave_the_list() {
    let mut sim = Sim::with(QueueOptions {
        max_delivery_attempts: 2,
        capacity: 3,
        ..QueueOptions::default()
    });
    sim.enqueue("a");
    sim.enqueue("b");
    let (a, _) = sim.lease("worker-1").unwrap();
    sim.fail(&a, false);
    for _ in 0..2 {
        let (b, _) = sim.lease("worker-2").unwrap();
        sim.fail(&b, true);
    }
    let dead: Vec<_> = sim
        .state
        .dead_letters()
        .iter()
        .map(|d| (d.item.sequence_id, d.item.attempt))
        .collect();
    assert_eq!(dead, vec![(1, 1), (2, 2)]);

    // Refusals change nothing.
    let before = sim.state.clone();
    for (which, code, status) in [
        (
            Selection::Items(vec![99]),
            codes::NOT_DEAD_LETTERED,
            ErrorStatus::NotFound,
        ),
        (
            Selection::Items(vec![2, 2]),
            codes::REDRIVE_NAMED_TWICE,
            ErrorStatus::InvalidArgument,
        ),
    ] {
        let err = sim
            .state
            .decide_redrive(&which, None, &sim.options)
            .unwrap_err();
        assert_eq!((err.code, err.status), (code, status), "{which:?}");
    }
    sim.enqueue("c");
    sim.enqueue("d");
    let full = sim
        .state
        .decide_redrive(&Selection::All, None, &sim.options)
        .unwrap_err();
    assert_eq!(full.status, ErrorStatus::ResourceExhausted);
    assert!(full.message.contains("room for 1"), "{}", full.message);
    assert_eq!(sim.state.dead_letters(), before.dead_letters());

    // One item: back at the end of the queue, attempt 1, its id, last
    // error and last token kept; out of the dead letters.
    let redriven = sim.commit(
        sim.state
            .decide_redrive(&Selection::Items(vec![2]), Some("operator"), &sim.options)
            .unwrap(),
    );
    assert_eq!(Sim::types(&redriven), vec![Type::Requeued]);
    let event = &redriven[0];
    assert_eq!(event.ownership, None, "no lease ended");
    assert_eq!(event.peer_id.as_deref(), Some("operator"));
    let item = &event.items[0];
    assert_eq!((item.sequence_id, item.attempt), (2, 1));
    assert_eq!(
        item.last_error.as_ref().unwrap().code.as_deref(),
        Some("mesh.demo.failure")
    );
    assert!(item.last_ownership_token.is_some());
    assert_eq!(sim.state.dead_letters().len(), 1);
    assert!(json::encode(event, WireVersion::V1).is_err(), "v2 only");
    // Its token from before stays fenced; the item is leased after c, d.
    let stale = item.last_ownership_token.unwrap();
    assert_eq!(
        sim.state.decide_complete(&stale).unwrap_err().code,
        codes::LEASE_INACTIVE
    );
    let order: Vec<_> = (0..3)
        .map(|_| sim.lease("worker-3").unwrap().0)
        .map(|h| (h.sequence_id, h.attempt))
        .collect();
    assert_eq!(order, vec![(3, 1), (4, 1), (2, 1)]);
    // A fresh set of attempts: one failure requeues it again.
    let handle = sim
        .state
        .active()
        .map(|l| l.handle)
        .find(|h| h.sequence_id == 2)
        .unwrap();
    assert_eq!(Sim::types(&sim.fail(&handle, true))[1], Type::Requeued);

    // A restore cannot reuse a dead-lettered item's id.
    let mut copy = (*sim.state.dead_letters()[0].item).clone();
    copy.last_error = None;
    let clash = sim.state.decide_restore(vec![copy], None).unwrap_err();
    assert_eq!(clash.code, codes::PENDING_ITEM_INVALID);

    // All: the rest; then nothing left, and an empty redrive decides none.
    sim.commit(
        sim.state
            .decide_redrive(&Selection::All, None, &sim.options)
            .unwrap(),
    );
    assert!(sim.state.dead_letters().is_empty());
    assert!(
        sim.state
            .decide_redrive(&Selection::All, None, &sim.options)
            .unwrap()
            .is_empty()
    );
    assert_eq!(sim.replayed(), sim.state);

    // A drained queue redrives nothing.
    sim.commit(sim.state.decide_drain().unwrap());
    let err = sim
        .state
        .decide_redrive(&Selection::All, None, &sim.options)
        .unwrap_err();
    assert_eq!(err.code, codes::DISPOSED);
}

#[test]
fn purge_discards_dead_letters_for_good_all_or_nothing() {
    let mut sim = Sim::with(QueueOptions {
        max_delivery_attempts: 1,
        ..QueueOptions::default()
    });
    for name in ["a", "b", "c"] {
        sim.enqueue(name);
        let (handle, _) = sim.lease("worker").unwrap();
        sim.fail(&handle, true);
    }
    sim.enqueue("d");
    let dead = |sim: &Sim| -> Vec<i64> {
        sim.state
            .dead_letters()
            .iter()
            .map(|d| d.item.sequence_id)
            .collect()
    };
    assert_eq!(dead(&sim), [1, 2, 3]);

    // Refusals (an id not dead-lettered, pending or unknown; one named
    // twice) purge nothing.
    for (ids, code, status) in [
        (
            vec![1, 4],
            codes::PURGE_NOT_DEAD_LETTERED,
            ErrorStatus::NotFound,
        ),
        (
            vec![99],
            codes::PURGE_NOT_DEAD_LETTERED,
            ErrorStatus::NotFound,
        ),
        (
            vec![2, 2],
            codes::PURGE_NAMED_TWICE,
            ErrorStatus::InvalidArgument,
        ),
    ] {
        let err = sim
            .state
            .decide_purge(&Selection::Items(ids.clone()), None)
            .unwrap_err();
        assert_eq!((err.code, err.status), (code, status), "{ids:?}");
    }

    // Named items: one v2 event carrying them as they were.
    let purged = sim.commit(
        sim.state
            .decide_purge(&Selection::Items(vec![3, 1]), Some("operator"))
            .unwrap(),
    );
    assert_eq!(Sim::types(&purged), vec![Type::DeadLetterPurged]);
    let event = &purged[0];
    assert_eq!(event.peer_id.as_deref(), Some("operator"));
    assert_eq!(event.ownership, None);
    let carried: Vec<_> = event.items.iter().map(|i| i.sequence_id).collect();
    assert_eq!(carried, [3, 1]);
    assert_eq!(event.items[0].payload.resource_id, "c");
    assert_eq!(event.metadata.get(keys::PURGE_COUNT), Some("2"));
    assert_eq!(event.metadata.get(keys::PENDING), Some("1"));
    assert!(json::encode(event, WireVersion::V1).is_err(), "v2 only");
    assert_eq!(dead(&sim), [2]);
    // The pending item is untouched, and the purged ids stay gone.
    assert_eq!(sim.state.pending_count(), 1);
    assert!(
        sim.state
            .decide_redrive(&Selection::Items(vec![1]), None, &sim.options)
            .is_err()
    );

    // Many items: events of at most PURGE_ITEMS_PER_EVENT, in order.
    let many = 2 * PURGE_ITEMS_PER_EVENT + 3;
    for _ in 0..many {
        sim.enqueue("e");
        let (handle, _) = sim.lease("worker").unwrap();
        sim.fail(&handle, false);
    }
    // (d, pending until now, is leased first and dead-lettered with them.)
    let ids: Vec<i64> = dead(&sim).into_iter().filter(|&id| id != 2).collect();
    assert_eq!(ids.len(), many);
    let events = sim.commit(
        sim.state
            .decide_purge(&Selection::Items(ids.clone()), None)
            .unwrap(),
    );
    let sizes: Vec<_> = events.iter().map(|e| e.items.len()).collect();
    assert_eq!(
        sizes,
        [PURGE_ITEMS_PER_EVENT, PURGE_ITEMS_PER_EVENT, 3],
        "{sizes:?}"
    );
    assert_eq!(
        events[2].metadata.get(keys::PURGE_COUNT),
        Some("3"),
        "each event counts its own"
    );
    let carried: Vec<i64> = events
        .iter()
        .flat_map(|e| e.items.iter().map(|i| i.sequence_id))
        .collect();
    assert_eq!(carried, ids);
    assert_eq!(dead(&sim), [2]);
    assert_eq!(sim.replayed(), sim.state);

    // A drained queue can still be purged; all, then none left.
    sim.commit(sim.state.decide_drain().unwrap());
    let rest = sim.commit(sim.state.decide_purge(&Selection::All, None).unwrap());
    assert_eq!(rest[0].items[0].sequence_id, 2);
    assert!(dead(&sim).is_empty());
    assert!(
        sim.state
            .decide_purge(&Selection::All, None)
            .unwrap()
            .is_empty()
    );
    assert_eq!(sim.replayed(), sim.state);

    // A fold of a purge of an item that is not dead-lettered fails and
    // changes nothing.
    let mut state = sim.state.clone();
    let mut stray = rest[0].clone();
    stray.sequence_number += 100;
    assert!(state.apply(&stray, &sim.options).is_err());
    assert_eq!(state, sim.state);
}

#[derive(Clone, Debug)]
enum Op {
    Enqueue,
    Lease,
    Complete(usize),
    Fail(usize, bool),
    Heartbeat(usize),
    Advance(u64),
    Drain,
    Restore,
    Redrive(Option<usize>),
    Purge(Option<usize>),
}

/// Dead letters for a redrive or a purge: all, one of them, or (with none)
/// an item that is not dead-lettered.
fn select(state: &QueueState, pick: Option<usize>) -> Selection {
    let dead: Vec<i64> = state
        .dead_letters()
        .iter()
        .map(|d| d.item.sequence_id)
        .collect();
    match pick {
        None => Selection::All,
        Some(i) if !dead.is_empty() => Selection::Items(vec![dead[i % dead.len()]]),
        Some(_) => Selection::Items(vec![1]),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Enqueue),
        4 => Just(Op::Lease),
        2 => any::<usize>().prop_map(Op::Complete),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, r)| Op::Fail(i, r)),
        1 => any::<usize>().prop_map(Op::Heartbeat),
        2 => (0u64..40).prop_map(Op::Advance),
        1 => Just(Op::Drain),
        1 => Just(Op::Restore),
        1 => proptest::option::of(any::<usize>()).prop_map(Op::Redrive),
        1 => proptest::option::of(any::<usize>()).prop_map(Op::Purge),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever happens, the log alone rebuilds the queue (leases' expiry
    /// aside: heartbeats are not events) and its fingerprint, the counts in every decision
    /// match the state after it, and no item is ever lost or doubled.
    #[test]
    fn the_log_alone_rebuilds_the_queue(ops in proptest::collection::vec(op(), 1..80)) {
        let mut sim = Sim::with(QueueOptions { max_delivery_attempts: 3, ..QueueOptions::default() });
        let mut drained_items = Vec::new();
        let mut completed = Vec::new();
        let mut purged = Vec::new();
        let mut enqueued = 0i64;
        for op in ops {
            let handles: Vec<Handle> = sim.state.active().map(|l| l.handle).collect();
            let pick = |i: usize| handles.get(i % handles.len().max(1)).cloned();
            match op {
                Op::Enqueue => {
                    if let Ok(d) = sim.state.decide_enqueue(payload("x"), None, &sim.options) {
                        sim.commit(d);
                        enqueued += 1;
                    }
                }
                Op::Lease => if !sim.state.is_drained() { let _ = sim.lease("w"); },
                Op::Complete(i) => if let Some(h) = pick(i) {
                    sim.complete(&h);
                    completed.push(h.sequence_id);
                },
                Op::Fail(i, requeue) => if let Some(h) = pick(i) { sim.fail(&h, requeue); },
                Op::Heartbeat(i) => if let Some(h) = pick(i) {
                    let options = sim.options.clone();
                    let now = sim.now;
                    sim.state.heartbeat(&h, now, &options).unwrap();
                },
                Op::Advance(s) => { sim.advance(Duration::from_secs(s)); sim.sweep(); }
                Op::Drain => if let Ok(d) = sim.state.decide_drain() {
                    let items = sim.commit(d).remove(0).items;
                    drained_items.extend(items);
                },
                Op::Restore => {
                    let items = std::mem::take(&mut drained_items);
                    let d = sim.state.decide_restore(items, None).unwrap();
                    sim.commit(d);
                }
                Op::Redrive(pick) => {
                    // Refused (drained, full, not dead-lettered): nothing changes.
                    if let Ok(d) = sim.state.decide_redrive(&select(&sim.state, pick), None, &sim.options) {
                        sim.commit(d);
                    }
                }
                Op::Purge(pick) => {
                    if let Ok(d) = sim.state.decide_purge(&select(&sim.state, pick), None) {
                        for event in sim.commit(d) {
                            purged.extend(event.items.iter().map(|i| i.sequence_id));
                        }
                    }
                }
            }
        }
        // Expiry moved by heartbeats is not in the log: the rest is.
        let replayed = sim.replayed();
        let ids = |s: &QueueState| {
            let mut ids: Vec<i64> = s.pending().map(|p| p.item.sequence_id)
                .chain(s.active().map(|l| l.item.sequence_id))
                .chain(s.dead_letters().iter().map(|d| d.item.sequence_id))
                .collect();
            ids.sort_unstable();
            ids
        };
        prop_assert_eq!(ids(&replayed), ids(&sim.state));
        // Heartbeats are left out of the fingerprint: the log alone gives it.
        prop_assert_eq!(replayed.fingerprint(), sim.state.fingerprint());
        // What the queue says it holds is what it holds.
        for state in [&sim.state, &replayed] {
            let held = ids(state);
            for id in 0..=enqueued + 1 {
                prop_assert_eq!(state.holds(id), held.contains(&id), "item {}", id);
            }
        }
        prop_assert_eq!(
            replayed.pending().collect::<Vec<_>>(),
            sim.state.pending().collect::<Vec<_>>()
        );
        prop_assert_eq!(replayed.dead_letters(), sim.state.dead_letters());
        prop_assert_eq!(
            replayed.active().map(|l| (&l.handle, &l.item, &l.owner)).collect::<Vec<_>>(),
            sim.state.active().map(|l| (&l.handle, &l.item, &l.owner)).collect::<Vec<_>>()
        );
        // Every item enqueued is somewhere, once: pending, leased, dead,
        // completed, purged, or handed out by a drain not yet restored.
        let mut all = ids(&sim.state);
        all.extend(drained_items.iter().map(|i| i.sequence_id));
        all.extend(completed);
        all.extend(purged);
        all.sort_unstable();
        prop_assert_eq!(all, (1..=enqueued).collect::<Vec<_>>());
    }
}
