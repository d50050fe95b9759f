//! The recent events of every host, from its stream (gRPC `Subscribe`,
//! the reference's JSON), for the live tail and `/demo/replication`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use omnirelay_replication::{Encoding, StreamId};
use omnirelay_replication_grpc::{Connection, Subscription};
use serde_json::Value;

use crate::hosts::lock;
use crate::mesh::{Catalog, Operation};

/// Events kept, over all hosts.
pub const RECENT: usize = 500;

/// One event and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenEvent {
    /// The host's URL.
    pub host: String,
    /// The event, as the reference writes it (version 1).
    pub event: Value,
}

/// The recent events and the counts by host and type.
#[derive(Debug, Default)]
pub struct Events {
    recent: Mutex<VecDeque<SeenEvent>>,
    counts: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    /// Per host, the lakehouse catalog its `Completed` events add up to.
    catalogs: Mutex<BTreeMap<String, Catalog>>,
}

impl Events {
    /// The newest `limit` events, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<SeenEvent> {
        let recent = lock(&self.recent);
        recent
            .iter()
            .skip(recent.len().saturating_sub(limit))
            .cloned()
            .collect()
    }

    /// Events seen per host and event type, since the control plane
    /// started (the tail starts 100 events back).
    pub fn counts(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        lock(&self.counts).clone()
    }

    /// The lakehouse catalog (the demo's scenario) that `host`'s completed
    /// catalog operations add up to, as the reference's snapshot JSON;
    /// `None` before any.
    pub fn catalog(&self, host: &str) -> Option<Value> {
        lock(&self.catalogs).get(host).map(Catalog::snapshot)
    }

    fn push(&self, host: &str, event: Value) {
        let kind = event["eventType"].as_str().unwrap_or("?").to_owned();
        if kind == "Completed"
            && event["payload"]["resourceType"] == crate::mesh::RESOURCE_TYPE
            && let Ok(op) = Operation::from_payload(&event["payload"])
        {
            lock(&self.catalogs)
                .entry(host.to_owned())
                .or_default()
                .apply(&op);
        }
        *lock(&self.counts)
            .entry(host.to_owned())
            .or_default()
            .entry(kind)
            .or_default() += 1;
        let mut recent = lock(&self.recent);
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(SeenEvent {
            host: host.to_owned(),
            event,
        });
    }

    /// Follows `host`'s stream `default` from 100 events back, until the
    /// events are dropped, reconnecting after a second when it goes away.
    pub(crate) async fn follow(events: std::sync::Weak<Self>, mut connection: Connection) {
        let host = connection.url.clone();
        connection.connect_timeout = Duration::from_secs(2);
        let stream = StreamId::default();
        // After a reconnect, from where it stopped.
        let mut next: Option<u64> = None;
        loop {
            let opened = match next {
                Some(from) => {
                    Subscription::open(&connection, &stream, from, Encoding::JSON_V1).await
                }
                None => Subscription::open_last(&connection, &stream, 100, Encoding::JSON_V1).await,
            };
            if let Ok(mut subscription) = opened {
                while let Ok(Some(batch)) = subscription.next().await {
                    let Some(events) = events.upgrade() else {
                        return;
                    };
                    for record in &batch.records {
                        if let Ok(event) = serde_json::from_slice(&record.payload) {
                            events.push(&host, event);
                        }
                    }
                    if subscription.position() > 0 {
                        next = Some(subscription.position());
                    }
                }
            }
            if events.upgrade().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Starts following every host through its connection (its URL, token
/// and authority); the tasks end when the returned events are dropped.
pub(crate) fn follow_all(connections: impl IntoIterator<Item = Connection>) -> Arc<Events> {
    let events = Arc::new(Events::default());
    for connection in connections {
        tokio::spawn(Events::follow(Arc::downgrade(&events), connection));
    }
    events
}
