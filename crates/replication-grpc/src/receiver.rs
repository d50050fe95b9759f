//! The receiving side of the reference's unary `Publish`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use omnirelay_replication::log::LogReader;
use omnirelay_replication::{
    DurableReplicator, EncodedEvents, Error, ErrorKind, Format, PendingPublish, Receipt, Replayed,
    RetentionHold, StreamId,
};
use omnirelay_resourcelease::{ResourceLeaseReplicationEvent, proto};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::marks::{self, Checkpoint};
use crate::quarantine::{self, Quarantined, Unreadable};
use crate::telemetry;

use crate::generated::resource_lease_replicator_grpc_server::{
    ResourceLeaseReplicatorGrpc, ResourceLeaseReplicatorGrpcServer,
};

/// Metadata keys the receiver writes on every event it appends: where it
/// came from.
pub mod origin {
    /// The sender's name.
    pub const SENDER: &str = "replication.origin.sender";
    /// The sender's numbering epoch.
    pub const EPOCH: &str = "replication.origin.epoch";
    /// The event's sequence at the sender.
    pub const SEQUENCE: &str = "replication.origin.sequence";
    /// The event's timestamp at the sender (the receiver stamps its own).
    pub const TIMESTAMP: &str = "replication.origin.timestamp";
}

/// Request metadata a sender may set.
pub mod request {
    /// The sender's name; senders without it share the name `anonymous`.
    pub const SENDER: &str = "omnirelay-sender";
    /// The sender's numbering epoch (a version-2 sender sets it, and
    /// raises it when its numbering restarts).
    pub const EPOCH: &str = "omnirelay-epoch";
    /// Who is behind the sender's name: the `grpc` sink sends its node's
    /// own name, so that two nodes configured with one sender name are
    /// told apart (see [`super::Sender::writer`]).
    pub const WRITER: &str = "omnirelay-writer";
}

/// Who sends a batch, as its request says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sender {
    /// Its name ([`request::SENDER`]; [`ANONYMOUS`] without one): the
    /// receiver keeps one high-water mark per name.
    pub name: String,
    /// Its numbering epoch, when it says ([`request::EPOCH`]).
    pub epoch: Option<u64>,
    /// Who is behind the name, when it says ([`request::WRITER`]). Once a
    /// name's events came from one writer, another writer under that name
    /// is refused (`FAILED_PRECONDITION`) unless it visibly restarts the
    /// numbering (a higher epoch, or sequence 1 after higher ones): two
    /// nodes sending under one name would otherwise have the events of
    /// one below the other's mark dropped as duplicates, in silence.
    pub writer: Option<String>,
}

impl Sender {
    /// `name`, with `epoch` when it says, and no writer.
    pub fn named(name: &str, epoch: Option<u64>) -> Self {
        Self {
            name: name.to_owned(),
            epoch,
            writer: None,
        }
    }
}

/// About what the origin metadata adds to an event's bytes.
const ORIGIN_BYTES: usize = 160;

/// The sender name of requests without [`request::SENDER`].
pub const ANONYMOUS: &str = "anonymous";

/// A sender's high-water mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mark {
    /// Its numbering epoch.
    pub epoch: u64,
    /// The highest sequence of that epoch received.
    pub sequence: u64,
}

/// What the receiver did with an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// Appended to the log (durable when this is returned).
    Appended(Receipt),
    /// At or below the sender's high-water mark: already received.
    Duplicate,
}

/// What the receiver did with a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The sender's numbering epoch after the batch.
    pub epoch: u64,
    /// The sender's high-water mark in that epoch: every event of the batch
    /// is durable or was already received.
    pub high_water: u64,
    /// Events appended.
    pub appended: u64,
    /// Events ignored as already received.
    pub duplicates: u64,
    /// The receipt of the last event appended, if any.
    pub receipt: Option<Receipt>,
}

/// A batch queued in the receiver's log; see [`Receiver::submit_batch`].
#[derive(Debug)]
pub struct SubmittedBatch {
    pending: Option<PendingPublish<ResourceLeaseReplicationEvent>>,
    outcome: BatchOutcome,
}

impl SubmittedBatch {
    /// Waits until the batch is durable.
    ///
    /// # Errors
    ///
    /// The log stopped or closed first.
    pub async fn durable(self) -> Result<BatchOutcome, Error> {
        let mut outcome = self.outcome;
        if let Some(pending) = self.pending {
            outcome.receipt = Some(pending.durable().await?);
        }
        Ok(outcome)
    }
}

/// Counters of a receiver.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Events appended.
    pub appended: AtomicU64,
    /// Events ignored as already received.
    pub duplicates: AtomicU64,
    /// Sequences a sender skipped (gaps in its numbering).
    pub gaps: AtomicU64,
    /// Times a sender restarted its numbering.
    pub epochs: AtomicU64,
    /// Events it could not read, kept in the quarantine.
    pub quarantined: AtomicU64,
}

/// One event of a batch as it arrived: decoded, as the protobuf bytes it
/// came in, or unreadable (an unknown future version or type), for the
/// quarantine.
#[derive(Clone, Debug, PartialEq)]
// Events are the common case: boxing each would cost an allocation per
// received event for the rare unreadable one.
#[allow(clippy::large_enum_variant)]
pub enum Incoming {
    /// A replication event.
    Event(ResourceLeaseReplicationEvent),
    /// A protobuf event (any schema version), not decoded yet: the receiver
    /// appends it as it came when it can (see [`Receiver::submit_incoming`]),
    /// and decodes it otherwise.
    Protobuf {
        /// Its sequence at the sender.
        sequence: u64,
        /// The message's bytes.
        payload: Bytes,
    },
    /// Bytes this receiver cannot read.
    Unreadable(Unreadable),
}

impl Incoming {
    /// Its sequence at the sender (0: unsequenced).
    fn sequence(&self) -> u64 {
        match self {
            Incoming::Event(event) => u64::try_from(event.sequence_number).unwrap_or(0),
            Incoming::Protobuf { sequence, .. } => *sequence,
            Incoming::Unreadable(unreadable) => unreadable.sequence,
        }
    }
}

/// An event the receiver appends, with its origin.
enum Accepted {
    /// Decoded, its origin stamped in its metadata (boxed: decoding
    /// allocates anyway, and the bytes are the common case).
    Event(Box<ResourceLeaseReplicationEvent>),
    /// As the protobuf bytes it came in, scanned.
    Protobuf {
        payload: Bytes,
        scanned: proto::Scanned,
        epoch: u64,
        sequence: u64,
    },
}

/// Stamps where `event` came from in its metadata.
fn stamp_origin(
    event: &mut ResourceLeaseReplicationEvent,
    sender: &str,
    epoch: u64,
    sequence: u64,
) {
    event.metadata.insert(origin::SENDER, sender);
    event.metadata.insert(origin::EPOCH, epoch.to_string());
    event
        .metadata
        .insert(origin::SEQUENCE, sequence.to_string());
    event
        .metadata
        .insert(origin::TIMESTAMP, event.timestamp.to_round_trip_string());
}

/// Appends to the protobuf event `payload`, scanned as `scanned`, the
/// metadata [`stamp_origin`] sets (the origin keys have no capitals, so
/// they replace any key of another case, as inserting them does). The
/// event's timestamp text is kept as it came when it is already the
/// round-trip form (as senders write it), rendered again otherwise.
fn append_origin(
    out: &mut Vec<u8>,
    sender: &str,
    epoch: u64,
    sequence: u64,
    payload: &[u8],
    scanned: &proto::Scanned,
) {
    let mut number = itoa::Buffer::new();
    proto::append_metadata(origin::SENDER, sender, out);
    proto::append_metadata(origin::EPOCH, number.format(epoch), out);
    proto::append_metadata(origin::SEQUENCE, number.format(sequence), out);
    match scanned.round_trip_timestamp(payload) {
        Some(text) => proto::append_metadata(origin::TIMESTAMP, text, out),
        None => proto::append_metadata(
            origin::TIMESTAMP,
            scanned.timestamp.round_trip_text().as_str(),
            out,
        ),
    }
}

/// Receives events over the reference's `Publish`, appends them to its
/// own durable log (its own gap-free sequence; the sender's sequence kept
/// as origin metadata) and answers only once they are durable. Re-sent
/// events are ignored by each sender's high-water mark, which survives a
/// restart and retention: it is rebuilt from the origin metadata in the
/// log, after the marks checkpoint the receiver keeps beside it (see
/// [`Receiver::open`]).
#[derive(Debug)]
pub struct Receiver {
    replicator: Arc<DurableReplicator<ResourceLeaseReplicationEvent>>,
    stream: StreamId,
    /// Where events it cannot read are kept.
    quarantine: std::path::PathBuf,
    marks: Marks,
    stats: ReceiverStats,
    /// Keeps the marks checkpoint (none for `memory` durability).
    checkpointer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = &self.checkpointer {
            task.abort();
        }
    }
}

/// Folds the log after `checkpoint` up to `upto` into its marks, on a
/// blocking thread.
async fn fold_log(
    mut checkpoint: Checkpoint,
    reader: LogReader,
    upto: u64,
    stream: &StreamId,
) -> Result<Checkpoint, Error> {
    let from = checkpoint.through;
    let (checkpoint, folded) = tokio::task::spawn_blocking(move || {
        let folded = checkpoint.fold(&reader, upto)?;
        Ok::<_, Error>((checkpoint, folded))
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, "reading the log failed").with_source(e))??;
    for (sequences, damage) in &folded.lost {
        // Read past, as the sinks do: the log no longer holds them, and a
        // sender's later events raise its mark past them all the same.
        tracing::warn!(
            stream = %stream, first = sequences.start(), last = sequences.end(), damage,
            "records lost to damage in the log were read past while rebuilding the senders' marks"
        );
    }
    if let Some(first) = folded.missing_before {
        // Only without a checkpoint (a receiver of an older release, or
        // one whose checkpoint was lost) can retention have gone first.
        tracing::warn!(
            stream = %stream, checkpoint = from, first,
            "the log no longer holds every record after the marks checkpoint: senders whose last events were only there are forgotten, and their re-sent events will be taken again"
        );
    }
    Ok(checkpoint)
}

/// Every sender's marks, shared with the task that checkpoints them.
type Marks = Arc<tokio::sync::Mutex<MarkBook>>;

/// A sender's mark as received, and as its events in the log say.
#[derive(Debug, Default)]
struct MarkBook {
    /// What was received: appended, or quarantined (which counts as
    /// received until a restart).
    received: HashMap<String, Mark>,
    /// What the log holds: what reading the log would give, and so what
    /// the checkpoint keeps.
    logged: HashMap<String, Mark>,
    /// The writer behind each name, where known (see [`Sender::writer`]).
    writers: HashMap<String, String>,
    /// The (name, writer) pairs refused and logged so far: one ERROR each.
    reported: std::collections::HashSet<(String, String)>,
}

impl MarkBook {
    fn new(marks: HashMap<String, Mark>, writers: HashMap<String, String>) -> Marks {
        Arc::new(tokio::sync::Mutex::new(Self {
            received: marks.clone(),
            logged: marks,
            writers,
            reported: std::collections::HashSet::new(),
        }))
    }

    /// Why a batch `from` a writer other than the one behind its name is
    /// refused, unless it restarts the numbering (its first sequence
    /// `first`) and so takes the name over, as a node whose log was lost
    /// does. `None`: it may go on.
    fn refuses(&mut self, from: &Sender, first: Option<u64>) -> Option<Error> {
        let sender = from.name.as_str();
        let writer = from.writer.as_deref()?;
        let mark = self.received.get(sender)?;
        let known = self.writers.get(sender).filter(|known| *known != writer)?;
        let restarts = match from.epoch {
            Some(given) => given > mark.epoch,
            None => first == Some(1) && mark.sequence > 1,
        };
        if restarts {
            return None;
        }
        if self.reported.insert((sender.to_owned(), writer.to_owned())) {
            tracing::error!(
                sender, writer, known = %known,
                "two writers send under one sender name; the second is refused"
            );
        }
        Some(Error::new(
            ErrorKind::Config,
            format!(
                "the sender name {sender:?} is in use by another writer ({known}, this one is \
                 {writer}): the receiver keeps one high-water mark per name and would drop the \
                 events of one below the other's as duplicates; give each node its own `sender` \
                 (unset, each sends under its own name)"
            ),
        ))
    }
}

/// Saves the marks checkpoint every [`marks::EVERY`] while the log moves,
/// and moves the retention hold with it; ends when the log closes. The
/// marks are taken under their lock, where no submission is under way, so
/// they are exactly what the log says through its last sequence then; they
/// are saved once the log is durable that far (under `interval`, synced: a
/// checkpoint never claims what a machine crash could take from the log).
async fn keep_checkpoint(
    replicator: Arc<DurableReplicator<ResourceLeaseReplicationEvent>>,
    stream: StreamId,
    path: std::path::PathBuf,
    marks: Marks,
    hold: RetentionHold,
) {
    let mut through = hold.through();
    let mut failing = false;
    loop {
        if replicator
            .wait_visible_beyond(&stream, through)
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(marks::EVERY).await;
        let checkpoint = {
            let marks = marks.lock().await;
            Checkpoint {
                through: replicator.last_sequence(&stream),
                marks: marks.logged.clone(),
                writers: marks.writers.clone(),
            }
        };
        if checkpoint.through > through
            && replicator
                .wait_visible_beyond(&stream, checkpoint.through - 1)
                .await
                .is_err()
        {
            return;
        }
        let saved = {
            let (path, stream) = (path.clone(), stream.clone());
            tokio::task::spawn_blocking(move || {
                checkpoint.save(&path, &stream).map(|()| checkpoint.through)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        match saved {
            Ok(saved) => {
                through = saved;
                hold.advance(through);
                if std::mem::take(&mut failing) {
                    tracing::info!(stream = %stream, "the receiver's marks checkpoint is saved again");
                }
            }
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        path = %path.display(), %error,
                        "the receiver's marks checkpoint cannot be saved; retention keeps the log after the last one"
                    );
                }
            }
        }
    }
}

pub(crate) fn origin_of(event: &ResourceLeaseReplicationEvent) -> Option<(String, Mark)> {
    let get = |key: &str| event.metadata.get(key);
    Some((
        get(origin::SENDER)?.to_owned(),
        Mark {
            epoch: get(origin::EPOCH)?.parse().ok()?,
            sequence: get(origin::SEQUENCE)?.parse().ok()?,
        },
    ))
}

/// [`origin_of`] a protobuf event, read without decoding it; `None` when
/// [`proto::metadata`] leaves it to decoding.
pub(crate) fn stored_origin(bytes: &[u8]) -> Option<Option<(String, Mark)>> {
    let [sender, epoch, sequence] =
        proto::metadata(bytes, [origin::SENDER, origin::EPOCH, origin::SEQUENCE])?;
    let mark = || {
        Some(Mark {
            epoch: epoch?.parse().ok()?,
            sequence: sequence?.parse().ok()?,
        })
    };
    Some(
        sender
            .zip(mark())
            .map(|(sender, mark)| (sender.to_owned(), mark)),
    )
}

impl Receiver {
    /// A receiver appending to `stream` of `replicator`. Every sender's
    /// high-water mark comes back from the marks checkpoint
    /// (`DATA_DIR/receiver/<stream>.marks.json`) and the log after it (the
    /// whole log when there is no checkpoint); from then on the checkpoint
    /// is brought up to date every second while the log moves, and holds
    /// retention back from the segments it has not folded yet.
    ///
    /// # Errors
    ///
    /// The log's failure to open or be read.
    pub async fn open(
        replicator: Arc<DurableReplicator<ResourceLeaseReplicationEvent>>,
        stream: StreamId,
    ) -> Result<Self, Error> {
        replicator.open_stream(&stream).await?;
        let (marks, checkpointer) = match replicator.log_reader(&stream) {
            // The files, as stored: protobuf records are not decoded.
            Some(reader) => {
                let path = marks::path(replicator.data_dir(), &stream);
                let last = replicator.last_sequence(&stream);
                let checkpoint = match Checkpoint::load(&path, &stream) {
                    Some(checkpoint) if checkpoint.through > last => {
                        // A machine crash lost records the checkpoint had
                        // folded (durability `none`): the log alone is
                        // what this receiver has.
                        tracing::warn!(
                            stream = %stream, checkpoint = checkpoint.through, log = last,
                            "the receiver's marks checkpoint is ahead of its log; rebuilding the marks from the log"
                        );
                        Checkpoint::default()
                    }
                    Some(checkpoint) => checkpoint,
                    None => Checkpoint::default(),
                };
                // Held before reading, so that nothing after the
                // checkpoint goes while it is read.
                let hold = replicator
                    .hold_retention(&stream, checkpoint.through)
                    .await?;
                let folded = fold_log(checkpoint, reader, last, &stream).await?;
                let marks = MarkBook::new(folded.marks, folded.writers);
                let task = tokio::spawn(keep_checkpoint(
                    replicator.clone(),
                    stream.clone(),
                    path,
                    marks.clone(),
                    hold,
                ));
                (marks, Some(task))
            }
            // `memory` durability: what the ring holds.
            None => {
                let mut marks = HashMap::new();
                let encoding = replicator.log_encoding();
                for item in replicator.replay(&stream, 1, encoding).await? {
                    if let Replayed::Record(record) = item? {
                        marks::fold_origin(&mut marks, encoding.format, record.bytes());
                    }
                }
                (MarkBook::new(marks, HashMap::new()), None)
            }
        };
        // The quarantine does not move the marks: were its events trusted
        // here, a batch whose readable events the log lost (a log that
        // failed stops for good) would read as received. A quarantined
        // event sent again after a restart is kept a second time instead.
        let quarantine = quarantine::path(replicator.data_dir(), &stream);
        Ok(Self {
            replicator,
            stream,
            quarantine,
            marks,
            stats: ReceiverStats::default(),
            checkpointer,
        })
    }

    /// The counters.
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// Every sender's high-water mark.
    pub async fn marks(&self) -> HashMap<String, Mark> {
        self.marks.lock().await.received.clone()
    }

    /// Receives `event` from `sender`: appends it unless it was already
    /// received. See [`Receiver::receive_batch`].
    ///
    /// # Errors
    ///
    /// The log's failure to make the event durable.
    pub async fn receive(
        &self,
        sender: &str,
        epoch: Option<u64>,
        event: ResourceLeaseReplicationEvent,
    ) -> Result<Received, Error> {
        let outcome = self.receive_batch(sender, epoch, vec![event]).await?;
        Ok(match outcome.receipt {
            Some(receipt) => Received::Appended(receipt),
            None => Received::Duplicate,
        })
    }

    /// Receives consecutive events of `sender`, in its order: appends, in
    /// one submission to the log, those not already received, and returns
    /// once they are durable. `epoch` is the sender's numbering epoch when
    /// it says (version-2 senders); otherwise sequence 1 after higher ones
    /// starts a new epoch (a reference sender restarts its numbering at 1).
    /// Gaps in a sender's numbering are accepted and counted. Events
    /// without a sequence (0) are always appended.
    ///
    /// # Errors
    ///
    /// The log's failure to make the events durable; then none of them
    /// counts as received.
    pub async fn receive_batch(
        &self,
        sender: &str,
        epoch: Option<u64>,
        events: Vec<ResourceLeaseReplicationEvent>,
    ) -> Result<BatchOutcome, Error> {
        self.submit_batch(sender, epoch, events)
            .await?
            .durable()
            .await
    }

    /// As [`Receiver::receive_batch`], returning once the events are queued
    /// in the log (in order with every earlier submission), so that the
    /// next batch can be taken while this one is being made durable; the
    /// [`SubmittedBatch`] resolves when it is. The sender's high-water mark
    /// moves now: should the log fail to make the batch durable, it has
    /// stopped for good, and a restart rebuilds the marks from what the
    /// log holds.
    ///
    /// # Errors
    ///
    /// The log refused the submission (it stopped, or an event cannot be
    /// encoded); then none of the events counts as received.
    pub async fn submit_batch(
        &self,
        sender: &str,
        epoch: Option<u64>,
        events: Vec<ResourceLeaseReplicationEvent>,
    ) -> Result<SubmittedBatch, Error> {
        self.submit_incoming(
            &Sender::named(sender, epoch),
            events.into_iter().map(Incoming::Event).collect(),
        )
        .await
    }

    /// As [`Receiver::submit_batch`], for events as they arrived: one this
    /// receiver cannot read (an unknown future version or type) is written
    /// to the quarantine (`DATA_DIR/quarantine/<stream>.jsonl`, synced,
    /// before the batch's other events are submitted) and counted, and
    /// counts as received: never dropped, never appended. After a restart
    /// the marks come from the log alone, so a quarantined event sent
    /// again then is kept again (the same sender, epoch and sequence).
    ///
    /// [`Incoming::Protobuf`] events are scanned, not decoded
    /// ([`proto::scan`]); when every event appended is one the scan vouched
    /// for and the log stores protobuf, their bytes are appended as they
    /// came, the origin metadata (and the log's schema version) appended to
    /// them as fields ([`DurableReplicator::submit_encoded`]): decoded, the
    /// same events the decoding path appends. Otherwise the batch is
    /// decoded; one the scan leaves to decoding that does not decode is
    /// quarantined.
    ///
    /// # Errors
    ///
    /// As [`Receiver::submit_batch`], and the quarantine's I/O errors.
    pub async fn submit_incoming(
        &self,
        from: &Sender,
        events: Vec<Incoming>,
    ) -> Result<SubmittedBatch, Error> {
        let (sender, epoch) = (from.name.as_str(), from.epoch);
        // Held across the submission, so that a re-send racing the original
        // is seen as a duplicate.
        let mut marks = self.marks.lock().await;
        let mut mark = marks.received.get(sender).copied();
        if let Some(refused) = marks.refuses(from, events.first().map(Incoming::sequence)) {
            drop(marks);
            metrics::counter!(
                telemetry::RECEIVED_EVENTS,
                "stream" => self.stream.as_str().to_owned(),
                "sender" => sender.to_owned(),
                "outcome" => "refused",
            )
            .increment(events.len() as u64);
            return Err(refused);
        }
        // The mark of the last event that goes to the log.
        let mut logged = None;
        let (mut duplicates, mut gaps, mut epochs) = (0u64, 0u64, 0u64);
        let mut accepted = Vec::with_capacity(events.len());
        let mut quarantined = Vec::new();
        for incoming in events {
            let sequence = incoming.sequence();
            let this_epoch = match (mark, epoch) {
                (None, given) => given.unwrap_or(1),
                (Some(m), Some(given)) if given < m.epoch => {
                    duplicates += 1;
                    continue;
                }
                (Some(_), Some(given)) => given,
                (Some(m), None) if sequence == 1 && m.sequence > 1 => m.epoch.saturating_add(1),
                (Some(m), None) => m.epoch,
            };
            if let Some(m) = mark {
                if this_epoch == m.epoch && sequence != 0 && sequence <= m.sequence {
                    duplicates += 1;
                    continue;
                }
                if this_epoch > m.epoch {
                    epochs += 1;
                    tracing::info!(sender, epoch = this_epoch, "sender restarted its numbering");
                } else if sequence > m.sequence.saturating_add(1) {
                    gaps += sequence - m.sequence - 1;
                }
            }
            let this = (sequence != 0).then_some(Mark {
                epoch: this_epoch,
                sequence,
            });
            mark = this.or(mark);
            let unreadable = match incoming {
                Incoming::Event(mut event) => {
                    stamp_origin(&mut event, sender, this_epoch, sequence);
                    accepted.push(Accepted::Event(Box::new(event)));
                    logged = this.or(logged);
                    continue;
                }
                Incoming::Protobuf { sequence, payload } => {
                    if let Some(scanned) = proto::scan(&payload) {
                        accepted.push(Accepted::Protobuf {
                            payload,
                            scanned,
                            epoch: this_epoch,
                            sequence,
                        });
                        logged = this.or(logged);
                        continue;
                    }
                    // What the scan does not vouch for, decoding decides.
                    match proto::decode(&payload) {
                        Ok(mut event) => {
                            stamp_origin(&mut event, sender, this_epoch, sequence);
                            accepted.push(Accepted::Event(Box::new(event)));
                            logged = this.or(logged);
                            continue;
                        }
                        Err(e) => Unreadable {
                            sequence,
                            format: Format::Protobuf,
                            payload: payload.to_vec(),
                            reason: e.to_string(),
                        },
                    }
                }
                Incoming::Unreadable(unreadable) => unreadable,
            };
            tracing::warn!(
                sender, sequence, reason = %unreadable.reason,
                "an event this receiver cannot read was quarantined"
            );
            quarantined.push(Quarantined::new(sender, this_epoch, &unreadable));
        }
        if !quarantined.is_empty() {
            quarantine::append(&self.quarantine, &quarantined)?;
        }
        let appended = accepted.len() as u64;
        let pending = self.append(sender, accepted).await?;
        if let Some(mark) = mark {
            marks.received.insert(sender.to_owned(), mark);
        }
        if let Some(logged) = logged {
            marks::raise(&mut marks.logged, sender, logged);
        }
        if let Some(writer) = &from.writer
            && marks.writers.get(sender) != Some(writer)
        {
            marks.writers.insert(sender.to_owned(), writer.clone());
        }
        drop(marks);
        self.stats.appended.fetch_add(appended, Ordering::Relaxed);
        self.stats
            .duplicates
            .fetch_add(duplicates, Ordering::Relaxed);
        self.stats.gaps.fetch_add(gaps, Ordering::Relaxed);
        self.stats.epochs.fetch_add(epochs, Ordering::Relaxed);
        let quarantined = quarantined.len() as u64;
        self.stats
            .quarantined
            .fetch_add(quarantined, Ordering::Relaxed);
        let labels = [
            ("stream", self.stream.as_str().to_owned()),
            ("sender", sender.to_owned()),
        ];
        let outcome = |outcome: &'static str| {
            let mut labels = labels.to_vec();
            labels.push(("outcome", outcome.to_owned()));
            labels
        };
        metrics::counter!(telemetry::RECEIVED_EVENTS, &outcome("appended")).increment(appended);
        metrics::counter!(telemetry::RECEIVED_EVENTS, &outcome("duplicate")).increment(duplicates);
        metrics::counter!(telemetry::RECEIVED_EVENTS, &outcome("quarantined"))
            .increment(quarantined);
        if gaps > 0 {
            metrics::counter!(telemetry::SENDER_GAPS, &labels).increment(gaps);
        }
        if epochs > 0 {
            metrics::counter!(telemetry::SENDER_EPOCHS, &labels).increment(epochs);
        }
        let mark = mark.unwrap_or_default();
        Ok(SubmittedBatch {
            pending,
            outcome: BatchOutcome {
                epoch: mark.epoch,
                high_water: mark.sequence,
                appended,
                duplicates,
                receipt: None,
            },
        })
    }

    /// Appends `accepted` in one submission: as the bytes they came in when
    /// every one came as protobuf the log can keep (its origin appended),
    /// decoded otherwise.
    async fn append(
        &self,
        sender: &str,
        accepted: Vec<Accepted>,
    ) -> Result<Option<PendingPublish<ResourceLeaseReplicationEvent>>, Error> {
        if accepted.is_empty() {
            return Ok(None);
        }
        let log = self.replicator.log_encoding();
        let keeps = |scanned: &proto::Scanned| {
            log.format == Format::Protobuf
                && scanned.version <= log.version
                && scanned.event_type.since() <= log.version
        };
        if accepted
            .iter()
            .all(|a| matches!(a, Accepted::Protobuf { scanned, .. } if keeps(scanned)))
        {
            let bytes = accepted
                .iter()
                .map(|a| match a {
                    Accepted::Protobuf { payload, .. } => payload.len() + ORIGIN_BYTES,
                    Accepted::Event(_) => 0,
                })
                .sum();
            let mut encoded = EncodedEvents::with_capacity(log, accepted.len(), bytes);
            for accepted in &accepted {
                let Accepted::Protobuf {
                    payload,
                    scanned,
                    epoch,
                    sequence,
                } = accepted
                else {
                    continue;
                };
                encoded.push(scanned.event_type.kind(), scanned.peer_id(payload), |out| {
                    out.extend_from_slice(payload);
                    append_origin(out, sender, *epoch, *sequence, payload, scanned);
                    if scanned.version < log.version {
                        proto::append_schema_version(log.version, out);
                    }
                });
            }
            return self
                .replicator
                .submit_encoded(&self.stream, &encoded)
                .await
                .map(Some);
        }
        let mut events = Vec::with_capacity(accepted.len());
        for accepted in accepted {
            events.push(match accepted {
                Accepted::Event(event) => *event,
                Accepted::Protobuf {
                    payload,
                    epoch,
                    sequence,
                    ..
                } => {
                    // The scan vouched that it decodes.
                    let mut event = proto::decode(&payload).map_err(|e| {
                        Error::new(
                            ErrorKind::Internal,
                            format!("a scanned event does not decode: {e}"),
                        )
                    })?;
                    stamp_origin(&mut event, sender, epoch, sequence);
                    event
                }
            });
        }
        self.replicator
            .submit_all(&self.stream, events)
            .await
            .map(Some)
            .map_err(|parts| parts.error)
    }

    /// The tonic service answering the reference's `Publish`.
    pub fn service(self: Arc<Self>) -> ResourceLeaseReplicatorGrpcServer<Service> {
        ResourceLeaseReplicatorGrpcServer::new(Service(self))
    }

    /// As [`Receiver::service`], refusing (`UNAUTHENTICATED`) every call
    /// without `authorization: Bearer <token>` when `token` is set.
    pub fn service_with_token(
        self: Arc<Self>,
        token: Option<String>,
    ) -> InterceptedService<ResourceLeaseReplicatorGrpcServer<Service>, TokenCheck> {
        InterceptedService::new(self.service(), TokenCheck::new(token))
    }
}

/// Whether an `authorization` header value is `Bearer <token>`. The
/// comparison does not stop at the first differing byte, so timing does not
/// tell how much of a guess was right.
pub fn bearer_matches(authorization: Option<&str>, token: &str) -> bool {
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| {
            given.len() == token.len()
                && given
                    .bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
}

/// Checks a request's bearer token; see [`crate::routes`].
#[derive(Clone, Debug)]
pub struct TokenCheck(Option<Arc<str>>);

impl TokenCheck {
    /// Requires `token` when set; lets every call through when not.
    pub fn new(token: Option<String>) -> Self {
        Self(token.map(Arc::from))
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.0 else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let matches = bearer_matches(given, token);
        if matches {
            Ok(request)
        } else {
            Err(Status::unauthenticated("a valid bearer token is required"))
        }
    }
}

/// The sender of a request: its name and, if it says, its numbering
/// epoch and writer.
pub(crate) fn sender_of(metadata: &tonic::metadata::MetadataMap) -> Result<Sender, Status> {
    let sender = metadata
        .get(request::SENDER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .unwrap_or(ANONYMOUS)
        .to_owned();
    let epoch = match metadata.get(request::EPOCH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| Status::invalid_argument("omnirelay-epoch is not a number"))?,
        ),
    };
    let writer = metadata
        .get(request::WRITER)
        .and_then(|v| v.to_str().ok())
        .filter(|w| !w.is_empty())
        .map(str::to_owned);
    Ok(Sender {
        name: sender,
        epoch,
        writer,
    })
}

/// The gRPC face of a [`Receiver`].
#[derive(Debug, Clone)]
pub struct Service(Arc<Receiver>);

pub(crate) fn status_of(error: &Error) -> Status {
    match error.kind() {
        ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Throttled => {
            Status::unavailable(error.to_string())
        }
        ErrorKind::Rejected | ErrorKind::Unsupported => Status::invalid_argument(error.to_string()),
        ErrorKind::Config => Status::failed_precondition(error.to_string()),
        _ => Status::internal(error.to_string()),
    }
}

#[tonic::async_trait]
impl ResourceLeaseReplicatorGrpc for Service {
    async fn publish(
        &self,
        request: Request<proto::pb::ResourceLeaseReplicationEventMessage>,
    ) -> Result<Response<proto::pb::PublishResponse>, Status> {
        let sender = sender_of(request.metadata())?;
        let message = request.into_inner();
        let incoming = match proto::from_message(message.clone()) {
            Ok((event, _)) => Incoming::Event(event),
            // An unknown future version or type: kept, as it came.
            Err(error) => Incoming::Unreadable(Unreadable {
                sequence: u64::try_from(message.sequence_number).unwrap_or(0),
                format: Format::Protobuf,
                payload: prost::Message::encode_to_vec(&message),
                reason: error.to_string(),
            }),
        };
        self.0
            .submit_incoming(&sender, vec![incoming])
            .await
            .map_err(|e| status_of(&e))?
            .durable()
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(proto::pb::PublishResponse {}))
    }
}
