//! The composite replicator decorator.

use std::fmt;

use crate::error::{Error, ErrorKind, PublishError};
use crate::event::ReplicationEvent;
use crate::replicator::{Receipt, Replicator, SharedReplicator};
use crate::stream::StreamId;

/// Fans each event out to several replicators at once and reports every
/// one's outcome.
///
/// Unlike the reference's `CompositeResourceLeaseReplicator`, which stopped
/// at the first failure, every member is always tried; each member assigns
/// its own sequence.
pub struct CompositeReplicator<E> {
    members: Vec<(String, SharedReplicator<E>)>,
}

/// What each member of a [`CompositeReplicator`] did with one event, in
/// member order.
#[derive(Debug)]
pub struct CompositeOutcome {
    /// `(member name, its receipt or its error)`.
    pub outcomes: Vec<(String, Result<Receipt, Error>)>,
}

impl CompositeOutcome {
    /// Whether every member accepted the event.
    pub fn all_accepted(&self) -> bool {
        self.outcomes.iter().all(|(_, r)| r.is_ok())
    }
}

impl<E: ReplicationEvent> CompositeReplicator<E> {
    /// A composite of named members.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] with no members or two members of one name.
    pub fn new(
        members: impl IntoIterator<Item = (String, SharedReplicator<E>)>,
    ) -> Result<Self, Error> {
        let members: Vec<_> = members.into_iter().collect();
        if members.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "a composite replicator needs at least one member",
            ));
        }
        for (i, (name, _)) in members.iter().enumerate() {
            if members[..i].iter().any(|(other, _)| other == name) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("two composite members are named {name:?}"),
                ));
            }
        }
        Ok(Self { members })
    }

    /// Publishes `event` to every member concurrently and reports each
    /// outcome.
    pub async fn publish_all(&self, stream: &StreamId, event: E) -> CompositeOutcome {
        let publishes = self.members.iter().map(|(name, member)| {
            let event = event.clone();
            async move {
                let result = member
                    .publish_to(stream, event)
                    .await
                    .map_err(PublishError::into_error);
                (name.clone(), result)
            }
        });
        CompositeOutcome {
            outcomes: futures::future::join_all(publishes).await,
        }
    }
}

impl<E: ReplicationEvent> Replicator<E> for CompositeReplicator<E> {
    /// Succeeds with the first member's receipt when every member accepted
    /// the event; otherwise fails with every member's outcome in the
    /// message, handing the event back only if no member accepted it.
    async fn publish_to(&self, stream: &StreamId, event: E) -> Result<Receipt, PublishError<E>> {
        let outcome = self.publish_all(stream, event.clone()).await;
        let accepted = outcome.outcomes.iter().filter(|(_, r)| r.is_ok()).count();
        let mut first_failure = None;
        let mut first_receipt = None;
        let mut detail = Vec::new();
        for (name, result) in outcome.outcomes {
            match result {
                Ok(receipt) => {
                    detail.push(format!("{name}: accepted as {}", receipt.sequence));
                    first_receipt.get_or_insert(receipt);
                }
                Err(err) => {
                    detail.push(format!("{name}: {err}"));
                    first_failure.get_or_insert(err.kind());
                }
            }
        }
        match (first_failure, first_receipt) {
            (None, Some(receipt)) => Ok(receipt),
            (kind, _) => {
                let error = Error::new(
                    kind.unwrap_or(ErrorKind::Internal),
                    format!(
                        "not every composite member accepted the event: {}",
                        detail.join("; ")
                    ),
                );
                Err(PublishError::new(error, (accepted == 0).then_some(event)))
            }
        }
    }
}

impl<E> fmt::Debug for CompositeReplicator<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.members.iter().map(|(name, _)| name))
            .finish()
    }
}
