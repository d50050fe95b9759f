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

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use omnirelay_replication::log::write_atomically;
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
/// holds its stream's start begins from one): the file as it is on disk.
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
    ) -> Result<Option<omnirelay_replication_grpc::Snapshot>, omnirelay_replication::Error> {
        use omnirelay_replication::{Error, ErrorKind};
        /// Of the file, only where it stands.
        #[derive(Deserialize)]
        struct Head {
            through: u64,
        }
        let path = path(&self.data_dir, stream);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the queue checkpoint {} cannot be read: {e}",
                        path.display()
                    ),
                ));
            }
        };
        let head: Head = serde_json::from_slice(&data).map_err(|e| {
            Error::new(
                ErrorKind::Corrupt,
                format!("the queue checkpoint {} is damaged: {e}", path.display()),
            )
        })?;
        Ok(Some(omnirelay_replication_grpc::Snapshot {
            through: head.through,
            data,
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

/// The file: the queue folded through `through`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    stream: String,
    through: u64,
    last_sequence_id: i64,
    drained: bool,
    pending: Vec<PendingFile>,
    active: Vec<ActiveFile>,
    dead_letters: Vec<DeadFile>,
}

/// Timestamps as .NET ticks (exact); bodies in base64.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ItemFile {
    resource_type: String,
    resource_id: String,
    partition_key: String,
    payload_encoding: String,
    body: String,
    attributes: Option<Vec<(String, String)>>,
    request_id: Option<String>,
    attempt: i32,
    enqueued_at: i64,
    last_error: Option<ErrorFile>,
    sequence_id: i64,
    last_ownership_token: Option<HandleFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ErrorFile {
    message: String,
    code: Option<String>,
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
struct PendingFile {
    item: ItemFile,
    available_at: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ActiveFile {
    item: ItemFile,
    handle: HandleFile,
    owner: Option<String>,
    granted_at: i64,
    expires_at: i64,
    last_heartbeat: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeadFile {
    item: ItemFile,
    error: Option<ErrorFile>,
    at: i64,
}

fn error_file(error: &ErrorInfo) -> ErrorFile {
    ErrorFile {
        message: error.message.clone(),
        code: error.code.clone(),
    }
}

fn error_of(file: ErrorFile) -> ErrorInfo {
    ErrorInfo {
        message: file.message,
        code: file.code,
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

fn item_file(item: &Item) -> ItemFile {
    let payload = &item.payload;
    ItemFile {
        resource_type: payload.resource_type.clone(),
        resource_id: payload.resource_id.clone(),
        partition_key: payload.partition_key.clone(),
        payload_encoding: payload.payload_encoding.clone(),
        body: BASE64.encode(&payload.body),
        attributes: payload.attributes.as_ref().map(|attributes| {
            attributes
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        }),
        request_id: payload.request_id.clone(),
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

fn item_of(file: ItemFile) -> Result<Item, String> {
    Ok(Item {
        payload: Payload {
            resource_type: file.resource_type,
            resource_id: file.resource_id,
            partition_key: file.partition_key,
            payload_encoding: file.payload_encoding,
            body: BASE64
                .decode(&file.body)
                .map_err(|e| format!("item {}: body: {e}", file.sequence_id))?,
            attributes: file
                .attributes
                .map(|attributes| attributes.into_iter().collect::<Metadata>()),
            request_id: file.request_id,
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
        let file: File = serde_json::from_slice(bytes).map_err(|e| format!("is damaged: {e}"))?;
        if file.stream != stream.as_str() {
            return Err(format!("is stream {:?}'s", file.stream));
        }
        let damaged = |e: String| format!("is damaged: {e}");
        let mut pending = Vec::with_capacity(file.pending.len());
        for entry in file.pending {
            pending.push(PendingEntry {
                item: item_of(entry.item).map_err(damaged)?,
                available_at: timestamp(entry.available_at).map_err(damaged)?,
            });
        }
        let mut active = Vec::with_capacity(file.active.len());
        for lease in file.active {
            active.push(ActiveLease {
                item: item_of(lease.item).map_err(damaged)?,
                handle: handle_of(&lease.handle).map_err(damaged)?,
                owner: lease.owner,
                granted_at: timestamp(lease.granted_at).map_err(damaged)?,
                expires_at: timestamp(lease.expires_at).map_err(damaged)?,
                last_heartbeat: timestamp(lease.last_heartbeat).map_err(damaged)?,
            });
        }
        let mut dead_letters = Vec::with_capacity(file.dead_letters.len());
        for letter in file.dead_letters {
            dead_letters.push(DeadLetter {
                item: item_of(letter.item).map_err(damaged)?,
                error: letter.error.map(error_of),
                at: timestamp(letter.at).map_err(damaged)?,
            });
        }
        Ok(Self {
            through: file.through,
            state: QueueState::from_parts(
                file.last_sequence_id,
                pending,
                active,
                dead_letters,
                file.drained,
            ),
        })
    }

    /// Replaces the checkpoint at `path` (a crash leaves the old one or
    /// this one).
    pub(crate) fn save(&self, path: &Path, stream: &StreamId) -> std::io::Result<()> {
        let state = &self.state;
        let file = File {
            stream: stream.as_str().to_owned(),
            through: self.through,
            last_sequence_id: state.last_sequence_id(),
            drained: state.is_drained(),
            pending: state
                .pending()
                .map(|entry| PendingFile {
                    item: item_file(&entry.item),
                    available_at: entry.available_at.ticks(),
                })
                .collect(),
            active: state
                .active()
                .map(|lease| ActiveFile {
                    item: item_file(&lease.item),
                    handle: handle_file(&lease.handle),
                    owner: lease.owner.clone(),
                    granted_at: lease.granted_at.ticks(),
                    expires_at: lease.expires_at.ticks(),
                    last_heartbeat: lease.last_heartbeat.ticks(),
                })
                .collect(),
            dead_letters: state
                .dead_letters()
                .iter()
                .map(|letter| DeadFile {
                    item: item_file(&letter.item),
                    error: letter.error.as_ref().map(error_file),
                    at: letter.at.ticks(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_atomically(path, &bytes)
    }
}
