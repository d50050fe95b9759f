//! The queue checkpoint: the queue as folded from its stream through a
//! sequence, kept in `DATA_DIR/dispatcher/<stream>.queue.json`.
//!
//! The queue is the fold of its whole stream, so without a checkpoint a
//! restart reads the stream from its first event (a long log takes a
//! while) and retention may delete none of it. The dispatcher saves the
//! queue every [`DispatcherOptions::checkpoint_interval`] while the log
//! moves, once the log is durable through the checkpoint's sequence, and
//! then lets retention delete what holds nothing after it; a restart
//! reads the checkpoint and the stream after it only. A checkpoint that
//! cannot be used (damaged, another stream's, ahead of the log) is
//! reported and the whole stream folded instead, while the log still
//! holds it.
//!
//! [`DispatcherOptions::checkpoint_interval`]: crate::DispatcherOptions::checkpoint_interval

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use omnirelay_replication::log::{write_atomically, write_atomically_with};
use omnirelay_replication::{StreamId, Timestamp};
use omnirelay_resourcelease::{
    Metadata, ResourceLeaseErrorInfo as ErrorInfo, ResourceLeaseItemPayload as Payload,
    ResourceLeaseOwnershipHandle as Handle, ResourceLeasePendingItem as Item,
};
use serde::{Deserialize, Serialize};

use crate::queue::{ActiveLease, DeadLetter, PendingEntry, QueueState};

/// The queue checkpoint of `stream` under `data_dir`.
pub fn path(data_dir: &Path, stream: &StreamId) -> PathBuf {
    data_dir
        .join("dispatcher")
        .join(format!("{}.queue.json", stream.as_str()))
}

/// Where a standby notes that its log began after an event, from its
/// primary's queue checkpoint through it.
fn begun_path(data_dir: &Path, stream: &StreamId) -> PathBuf {
    data_dir
        .join("dispatcher")
        .join(format!("{}.begun.json", stream.as_str()))
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Begun {
    after: u64,
}

/// Notes that the log of `stream` begins after event `after`, from a
/// queue checkpoint through it: without that checkpoint its queue cannot
/// be rebuilt ([`begun_from_checkpoint`]).
pub(crate) fn mark_begun(data_dir: &Path, stream: &StreamId, after: u64) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(&Begun { after }).map_err(std::io::Error::other)?;
    write_atomically(&begun_path(data_dir, stream), &bytes)
}

/// Whether the log of `stream`, which began after event `started`, began
/// from a queue checkpoint through it (a standby begun from its primary's)
/// rather than after records its sinks held: its queue then needs a
/// checkpoint through `started` at least.
pub fn begun_from_checkpoint(data_dir: &Path, stream: &StreamId, started: u64) -> bool {
    started > 0
        && std::fs::read(begun_path(data_dir, stream))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Begun>(&bytes).ok())
            .is_some_and(|begun| begun.after == started)
}

/// What a queue checkpoint holds, for tools that read a data directory
/// beside its node (`omnirelay log inspect`, `log verify`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The last event of the stream the queue is folded through.
    pub through: u64,
    /// Pending items.
    pub pending: usize,
    /// Leased items.
    pub leased: usize,
    /// Dead-lettered items.
    pub dead_lettered: usize,
    /// Whether the queue was drained.
    pub drained: bool,
}

/// The queue checkpoint of `stream` under `data_dir`, read as a start
/// reads it: `Ok(None)` when there is none, `Err` (why, as a start would
/// warn) when there is one that cannot be read.
///
/// # Errors
///
/// Why the file cannot be used: unreadable, damaged, another stream's.
pub fn summary(data_dir: &Path, stream: &StreamId) -> Result<Option<Summary>, String> {
    let checkpoint = Checkpoint::load(&path(data_dir, stream), stream)?;
    Ok(checkpoint.map(|checkpoint| Summary {
        through: checkpoint.through,
        pending: checkpoint.state.pending_count(),
        leased: checkpoint.state.active_count(),
        dead_lettered: checkpoint.state.dead_letters().len(),
        drained: checkpoint.state.is_drained(),
    }))
}

/// A node's queue checkpoints as snapshots of their streams, for the
/// gRPC `Snapshot` (a new standby of a dispatcher whose log no longer
/// holds its stream's start begins from one): the file as it is on disk,
/// read as it is sent (from the file opened, which a newer checkpoint
/// replaces without changing what is being read).
#[derive(Clone, Debug)]
pub struct Snapshots {
    data_dir: PathBuf,
}

impl Snapshots {
    /// The queue checkpoints under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
        }
    }
}

impl omnirelay_replication_grpc::SnapshotSource for Snapshots {
    fn snapshot(
        &self,
        stream: &StreamId,
    ) -> Result<Option<omnirelay_replication_grpc::SnapshotReader>, omnirelay_replication::Error>
    {
        use std::io::Seek as _;

        use omnirelay_replication::{Error, ErrorKind};
        /// Of the file, only where it stands (the rest is parsed, to check
        /// it, and not kept).
        #[derive(Deserialize)]
        struct Head {
            through: u64,
        }
        let path = path(&self.data_dir, stream);
        let unreadable = |e: std::io::Error| {
            Error::new(
                ErrorKind::Unavailable,
                format!(
                    "the queue checkpoint {} cannot be read: {e}",
                    path.display()
                ),
            )
        };
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unreadable(e)),
        };
        let head: Head =
            serde_json::from_reader(std::io::BufReader::with_capacity(1 << 16, &mut file))
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Corrupt,
                        format!("the queue checkpoint {} is damaged: {e}", path.display()),
                    )
                })?;
        file.rewind().map_err(unreadable)?;
        Ok(Some(omnirelay_replication_grpc::SnapshotReader {
            through: head.through,
            data: Box::new(file),
        }))
    }
}

/// Why a checkpoint through `through` cannot be used beside a log that
/// began after event `started` and holds through `last`; `None` when it
/// can. A start that finds such a checkpoint removes it and folds the
/// whole stream instead.
pub fn unusable_beside(through: u64, started: u64, last: u64) -> Option<String> {
    if through > last {
        Some(format!(
            "is through event {through}, past the log's last ({last}): a crash took events the \
             checkpoint had, or the log is not the one it was saved beside"
        ))
    } else if through < started {
        Some(format!(
            "is through event {through}, before the log's first ({}): the log was begun again",
            started + 1
        ))
    } else {
        None
    }
}

/// The file: the queue folded through `through`. Read into owned parts
/// (`P`, `A`, `D` vectors of them); written from the queue as it is,
/// each part borrowed as it is serialized ([`Parts`]), so that saving a
/// large queue copies none of it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File<'a, P, A, D> {
    stream: Cow<'a, str>,
    through: u64,
    last_sequence_id: i64,
    drained: bool,
    pending: P,
    active: A,
    dead_letters: D,
}

/// The file as read: each part straight into the queue's own form.
type FileRead = File<'static, Read<PendingEntry>, Read<ActiveLease>, Read<DeadLetter>>;

/// A part of the queue read from the file one element at a time, each
/// turned into the queue's form as it is read: the file's form of a large
/// queue is never in memory whole beside the queue.
struct Read<T>(Vec<T>);

/// An element of the queue and its form in the file.
trait FromFile: Sized {
    type File: serde::de::DeserializeOwned;

    /// The element, or why the file's is damaged.
    fn from_file(file: Self::File) -> Result<Self, String>;
}

impl<'de, T: FromFile> Deserialize<'de> for Read<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Each<T>(std::marker::PhantomData<T>);
        impl<'de, T: FromFile> serde::de::Visitor<'de> for Each<T> {
            type Value = Vec<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list")
            }

            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> Result<Vec<T>, S::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(file) = seq.next_element::<T::File>()? {
                    out.push(T::from_file(file).map_err(serde::de::Error::custom)?);
                }
                Ok(out)
            }
        }
        deserializer
            .deserialize_seq(Each(std::marker::PhantomData))
            .map(Read)
    }
}

impl FromFile for PendingEntry {
    type File = PendingFile<'static>;

    fn from_file(entry: PendingFile<'static>) -> Result<Self, String> {
        Ok(Self {
            item: item_of(entry.item).map(Arc::new)?,
            available_at: timestamp(entry.available_at)?,
        })
    }
}

impl FromFile for ActiveLease {
    type File = ActiveFile<'static>;

    fn from_file(lease: ActiveFile<'static>) -> Result<Self, String> {
        Ok(Self {
            item: item_of(lease.item).map(Arc::new)?,
            handle: handle_of(&lease.handle)?,
            owner: lease.owner.map(Cow::into_owned),
            granted_at: timestamp(lease.granted_at)?,
            expires_at: timestamp(lease.expires_at)?,
            last_heartbeat: timestamp(lease.last_heartbeat)?,
        })
    }
}

impl FromFile for DeadLetter {
    type File = DeadFile<'static>;

    fn from_file(letter: DeadFile<'static>) -> Result<Self, String> {
        Ok(Self {
            item: item_of(letter.item).map(Arc::new)?,
            error: letter.error.map(error_of),
            at: timestamp(letter.at)?,
        })
    }
}

/// Timestamps as .NET ticks (exact); bodies in base64.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ItemFile<'a> {
    resource_type: Cow<'a, str>,
    resource_id: Cow<'a, str>,
    partition_key: Cow<'a, str>,
    payload_encoding: Cow<'a, str>,
    body: String,
    attributes: Option<Vec<(Cow<'a, str>, Cow<'a, str>)>>,
    request_id: Option<Cow<'a, str>>,
    attempt: i32,
    enqueued_at: i64,
    last_error: Option<ErrorFile<'a>>,
    sequence_id: i64,
    last_ownership_token: Option<HandleFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ErrorFile<'a> {
    message: Cow<'a, str>,
    code: Option<Cow<'a, str>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HandleFile {
    sequence_id: i64,
    attempt: i32,
    lease_id: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PendingFile<'a> {
    item: ItemFile<'a>,
    available_at: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ActiveFile<'a> {
    item: ItemFile<'a>,
    handle: HandleFile,
    owner: Option<Cow<'a, str>>,
    granted_at: i64,
    expires_at: i64,
    last_heartbeat: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeadFile<'a> {
    item: ItemFile<'a>,
    error: Option<ErrorFile<'a>>,
    at: i64,
}

/// A sequence serialized one element at a time, as `each()` yields them.
struct Parts<F>(F);

impl<F, I> Serialize for Parts<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq((self.0)())
    }
}

fn error_file(error: &ErrorInfo) -> ErrorFile<'_> {
    ErrorFile {
        message: Cow::Borrowed(&error.message),
        code: error.code.as_deref().map(Cow::Borrowed),
    }
}

fn error_of(file: ErrorFile<'_>) -> ErrorInfo {
    ErrorInfo {
        message: file.message.into_owned(),
        code: file.code.map(Cow::into_owned),
    }
}

fn handle_file(handle: &Handle) -> HandleFile {
    HandleFile {
        sequence_id: handle.sequence_id,
        attempt: handle.attempt,
        lease_id: handle.lease_id.to_string(),
    }
}

fn handle_of(file: &HandleFile) -> Result<Handle, String> {
    Ok(Handle {
        sequence_id: file.sequence_id,
        attempt: file.attempt,
        lease_id: uuid::Uuid::parse_str(&file.lease_id)
            .map_err(|e| format!("lease id {:?}: {e}", file.lease_id))?,
    })
}

fn item_file(item: &Item) -> ItemFile<'_> {
    let payload = &item.payload;
    ItemFile {
        resource_type: Cow::Borrowed(&payload.resource_type),
        resource_id: Cow::Borrowed(&payload.resource_id),
        partition_key: Cow::Borrowed(&payload.partition_key),
        payload_encoding: Cow::Borrowed(&payload.payload_encoding),
        body: BASE64.encode(&payload.body),
        attributes: payload.attributes.as_ref().map(|attributes| {
            attributes
                .iter()
                .map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)))
                .collect()
        }),
        request_id: payload.request_id.as_deref().map(Cow::Borrowed),
        attempt: item.attempt,
        enqueued_at: item.enqueued_at.ticks(),
        last_error: item.last_error.as_ref().map(error_file),
        sequence_id: item.sequence_id,
        last_ownership_token: item.last_ownership_token.as_ref().map(handle_file),
    }
}

fn timestamp(ticks: i64) -> Result<Timestamp, String> {
    Timestamp::from_ticks(ticks).ok_or_else(|| format!("{ticks} ticks is not a time"))
}

fn item_of(file: ItemFile<'_>) -> Result<Item, String> {
    Ok(Item {
        payload: Payload {
            resource_type: file.resource_type.into_owned(),
            resource_id: file.resource_id.into_owned(),
            partition_key: file.partition_key.into_owned(),
            payload_encoding: file.payload_encoding.into_owned(),
            body: BASE64
                .decode(&file.body)
                .map_err(|e| format!("item {}: body: {e}", file.sequence_id))?,
            attributes: file
                .attributes
                .map(|attributes| attributes.into_iter().collect::<Metadata>()),
            request_id: file.request_id.map(Cow::into_owned),
        },
        attempt: file.attempt,
        enqueued_at: timestamp(file.enqueued_at)?,
        last_error: file.last_error.map(error_of),
        sequence_id: file.sequence_id,
        last_ownership_token: file
            .last_ownership_token
            .as_ref()
            .map(handle_of)
            .transpose()?,
    })
}

/// The queue folded through `through`, as the dispatcher saved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) through: u64,
    pub(crate) state: QueueState,
}

impl Checkpoint {
    /// The checkpoint at `path` for `stream`: `Ok(None)` when there is
    /// none, `Err` (why) when there is one that cannot be used.
    pub(crate) fn load(path: &Path, stream: &StreamId) -> Result<Option<Self>, String> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot be read: {e}")),
        };
        Self::from_bytes(&bytes, stream).map(Some)
    }

    /// The checkpoint of `stream` in `bytes` (a file's, or a snapshot's
    /// from another node), or why it cannot be used.
    pub(crate) fn from_bytes(bytes: &[u8], stream: &StreamId) -> Result<Self, String> {
        let file: FileRead =
            serde_json::from_slice(bytes).map_err(|e| format!("is damaged: {e}"))?;
        if file.stream != stream.as_str() {
            return Err(format!("is stream {:?}'s", file.stream));
        }
        Ok(Self {
            through: file.through,
            state: QueueState::from_parts(
                file.last_sequence_id,
                file.pending.0,
                file.active.0,
                file.dead_letters.0,
                file.drained,
            ),
        })
    }

    /// Replaces the checkpoint at `path` (a crash leaves the old one or
    /// this one).
    pub(crate) fn save(&self, path: &Path, stream: &StreamId) -> std::io::Result<()> {
        let state = &self.state;
        let file = File {
            stream: Cow::Borrowed(stream.as_str()),
            through: self.through,
            last_sequence_id: state.last_sequence_id(),
            drained: state.is_drained(),
            pending: Parts(|| {
                state.pending().map(|entry| PendingFile {
                    item: item_file(&entry.item),
                    available_at: entry.available_at.ticks(),
                })
            }),
            active: Parts(|| {
                state.active().map(|lease| ActiveFile {
                    item: item_file(&lease.item),
                    handle: handle_file(&lease.handle),
                    owner: lease.owner.as_deref().map(Cow::Borrowed),
                    granted_at: lease.granted_at.ticks(),
                    expires_at: lease.expires_at.ticks(),
                    last_heartbeat: lease.last_heartbeat.ticks(),
                })
            }),
            dead_letters: Parts(|| {
                state.dead_letters().iter().map(|letter| DeadFile {
                    item: item_file(&letter.item),
                    error: letter.error.as_ref().map(error_file),
                    at: letter.at.ticks(),
                })
            }),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_atomically_with(path, |out| {
            serde_json::to_writer(out, &file).map_err(std::io::Error::other)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue with one of everything a checkpoint holds: a plain pending
    /// item, a requeued one (attributes, request id, last error and
    /// token), a lease, a dead letter.
    fn varied() -> Checkpoint {
        let at = |seconds: i64| {
            Timestamp::from_ticks(639_000_000_000_000_000 + seconds * 10_000_000).unwrap()
        };
        let handle = |sequence_id, attempt, last: u8| Handle {
            sequence_id,
            attempt,
            lease_id: uuid::Uuid::from_bytes([last; 16]),
        };
        let item = |sequence_id: i64, attempt| Item {
            payload: Payload {
                resource_type: "catalog.table".to_owned(),
                resource_id: format!("table-{sequence_id}"),
                partition_key: "p-\"1\"".to_owned(),
                payload_encoding: "application/json".to_owned(),
                body: format!("{{\"op\":{sequence_id}}}").into_bytes(),
                attributes: None,
                request_id: None,
            },
            attempt,
            enqueued_at: at(sequence_id),
            last_error: None,
            sequence_id,
            last_ownership_token: None,
        };
        let failure = ErrorInfo {
            message: "worker lost\nits disk".to_owned(),
            code: Some("mesh.demo.failure".to_owned()),
        };
        let mut requeued = item(2, 2);
        requeued.payload.attributes = Some(Metadata::from([("tenant", "acme"), ("op", "commit")]));
        requeued.payload.request_id = Some("req-2".to_owned());
        requeued.last_error = Some(failure.clone());
        requeued.last_ownership_token = Some(handle(2, 1, 0x22));
        let mut dead = item(4, 5);
        dead.last_error = Some(failure.clone());
        dead.last_ownership_token = Some(handle(4, 5, 0x44));
        Checkpoint {
            through: 17,
            state: QueueState::from_parts(
                4,
                vec![
                    PendingEntry {
                        item: item(1, 1).into(),
                        available_at: at(1),
                    },
                    PendingEntry {
                        item: requeued.into(),
                        available_at: at(30),
                    },
                ],
                vec![ActiveLease {
                    item: item(3, 1).into(),
                    handle: handle(3, 1, 0x33),
                    owner: Some("worker-é".to_owned()),
                    granted_at: at(40),
                    expires_at: at(70),
                    last_heartbeat: at(45),
                }],
                vec![DeadLetter {
                    item: dead.into(),
                    error: Some(failure),
                    at: at(50),
                }],
                false,
            ),
        }
    }

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/queue-checkpoint.json")
    }

    /// The file as the version before items were shared wrote it: read
    /// as the same queue, and written again byte for byte.
    #[test]
    fn the_checkpoint_file_is_pinned_by_a_fixture() {
        let stream = StreamId::new("default").unwrap();
        let loaded = Checkpoint::load(&fixture(), &stream).unwrap().unwrap();
        assert_eq!(loaded, varied());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dispatcher/default.queue.json");
        varied().save(&path, &stream).unwrap();
        assert_eq!(
            String::from_utf8(std::fs::read(&path).unwrap()).unwrap(),
            std::fs::read_to_string(fixture()).unwrap()
        );
    }

    /// An element that cannot be read makes the file unusable, with where
    /// and why.
    #[test]
    fn a_damaged_element_is_named() {
        let stream = StreamId::new("default").unwrap();
        let fixture = std::fs::read_to_string(fixture()).unwrap();
        for (from, to, why) in [
            ("eyJvcCI6Mn0=", "not base64!", "item 2: body: "),
            (
                "\"grantedAt\":639000000400000000",
                "\"grantedAt\":-1",
                "-1 ticks is not a time",
            ),
        ] {
            assert!(fixture.contains(from), "{from}");
            let damaged = fixture.replace(from, to);
            let why_not = Checkpoint::from_bytes(damaged.as_bytes(), &stream).unwrap_err();
            assert!(why_not.starts_with("is damaged: "), "{why_not}");
            assert!(why_not.contains(why), "{why_not}");
        }
        let other = Checkpoint::from_bytes(fixture.as_bytes(), &StreamId::new("other").unwrap());
        assert_eq!(other.unwrap_err(), "is stream \"default\"'s");
    }

    /// A checkpoint's copy shares the queue's items, and keeps what it
    /// took while the queue moves on.
    #[test]
    fn a_copy_of_the_queue_shares_its_items_and_keeps_what_it_took() {
        let options = crate::QueueOptions {
            heartbeat_interval: std::time::Duration::ZERO,
            ..crate::QueueOptions::default()
        };
        let mut state = varied().state;
        let copy = state.clone();
        let first = |s: &QueueState| s.pending().next().unwrap().item.clone();
        assert!(Arc::ptr_eq(&first(&state), &first(&copy)));
        let lease = state.active().next().unwrap().handle;
        let later = state.active().next().unwrap().last_heartbeat;
        let later = Timestamp::from_ticks(later.ticks() + 10_000_000).unwrap();
        assert!(state.heartbeat(&lease, later, &options).unwrap());
        assert_eq!(state.active().next().unwrap().last_heartbeat, later);
        assert_eq!(copy, varied().state, "the copy is as it was taken");
        assert!(Arc::ptr_eq(
            &state.active().next().unwrap().item,
            &copy.active().next().unwrap().item
        ));
    }
}
