//! The object-storage sink.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore, PutMode, PutOptions, PutPayload};
use omnirelay_replication::{
    Error, ErrorKind, Format, Health, HealthCell, Record, Sink, SinkError, StreamId, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::layout::{
    CHECKPOINT_NAME, DEFAULT_PREFIX, KeyKind, Layout, derived_prefix, event_key, parse_key,
    segment_key, validate_prefix,
};

/// Knobs of an [`ObjectStoreSink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectSinkOptions {
    /// The key prefix of the stream `default`.
    pub prefix: String,
    /// Prefixes of other streams, by stream id. A stream not listed writes
    /// under `<directory of prefix><stream>/`.
    pub prefixes: BTreeMap<String, String>,
    /// One object per event or per batch.
    pub layout: Layout,
    /// Objects of one batch written at once at most (per-event layout).
    pub max_in_flight: usize,
    /// Whether to send `Content-Type` (stores that keep attributes).
    pub content_type: bool,
    /// For a store on the local filesystem: its root, so that written
    /// objects can be synced to disk before a batch counts as applied.
    pub sync_root: Option<PathBuf>,
}

impl ObjectSinkOptions {
    /// The reference's prefix and layout, 16 writes in flight.
    pub fn new() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            prefixes: BTreeMap::new(),
            layout: Layout::PerEvent,
            max_in_flight: 16,
            content_type: true,
            sync_root: None,
        }
    }

    /// The prefix `stream` writes under.
    pub fn prefix_for(&self, stream: &str) -> String {
        if let Some(prefix) = self.prefixes.get(stream) {
            return prefix.clone();
        }
        if stream == StreamId::DEFAULT {
            return self.prefix.clone();
        }
        derived_prefix(&self.prefix, stream)
    }

    /// Checks every prefix, and that no two streams share one.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] naming the first problem.
    pub fn validate(&self) -> Result<(), Error> {
        validate_prefix(&self.prefix)?;
        if self.max_in_flight == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "max_in_flight must be at least 1",
            ));
        }
        let mut owners: BTreeMap<String, &str> = BTreeMap::new();
        owners.insert(self.prefix_for(StreamId::DEFAULT), StreamId::DEFAULT);
        for (stream, prefix) in &self.prefixes {
            StreamId::new(stream)?;
            validate_prefix(prefix)?;
            if stream == StreamId::DEFAULT {
                continue;
            }
            if let Some(other) = owners.insert(prefix.clone(), stream) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("streams {other:?} and {stream:?} would share the prefix {prefix:?}"),
                ));
            }
        }
        Ok(())
    }
}

impl Default for ObjectSinkOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// The checkpoint object's body.
#[derive(Serialize, Deserialize)]
struct CheckpointDoc {
    stream: String,
    sequence: u64,
    updated_at: String,
}

/// Writes records as objects in the reference's key layout (or as one
/// JSON-lines object per batch), create-only, so that a retry can never
/// overwrite what an earlier attempt wrote; see the crate documentation.
#[derive(Clone)]
pub struct ObjectStoreSink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ObjectStoreSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreSink")
            .field("store", &self.inner.store.to_string())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    options: ObjectSinkOptions,
    /// Per stream: the highest sequence known to be stored, once read.
    marks: tokio::sync::Mutex<HashMap<StreamId, u64>>,
    health: HealthCell,
}

/// An object-store failure as the framework's error.
pub(crate) fn store_error(context: &str, err: object_store::Error) -> Error {
    let kind = match &err {
        // Refused credentials or permissions: keys rotated, a policy
        // being changed. Retried (and shown as the sink's error), so that
        // they heal without a restart instead of failing the node's start
        // or sending every record to the dead letters.
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ErrorKind::Unavailable,
        object_store::Error::UnknownConfigurationKey { .. }
        | object_store::Error::NotSupported { .. }
        | object_store::Error::NotImplemented
        | object_store::Error::InvalidPath { .. } => ErrorKind::Config,
        _ => ErrorKind::Unavailable,
    };
    // The source says what failed; the message says where.
    Error::new(kind, format!("object store: {context}")).with_source(err)
}

impl ObjectStoreSink {
    /// A sink writing to `store`. No I/O happens until first use.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for invalid prefixes or two streams sharing
    /// one.
    pub fn new(store: Arc<dyn ObjectStore>, options: ObjectSinkOptions) -> Result<Self, Error> {
        options.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                options,
                marks: tokio::sync::Mutex::default(),
                health: HealthCell::default(),
            }),
        })
    }

    /// The options.
    pub fn options(&self) -> &ObjectSinkOptions {
        &self.inner.options
    }
}

impl Inner {
    /// The highest sequence of `stream` stored: the checkpoint object's,
    /// else (objects written by the reference, or before the first
    /// checkpoint) the highest key under the prefix.
    async fn read_mark(&self, stream: &StreamId) -> Result<u64, Error> {
        let prefix = self.options.prefix_for(stream.as_str());
        let checkpoint = ObjectPath::from(format!("{prefix}{CHECKPOINT_NAME}"));
        match self.store.get(&checkpoint).await {
            Ok(found) => {
                let body = found
                    .bytes()
                    .await
                    .map_err(|e| store_error("read the checkpoint", e))?;
                match serde_json::from_slice::<CheckpointDoc>(&body) {
                    Ok(doc) if doc.stream != stream.as_str() => {
                        return Err(Error::new(
                            ErrorKind::Config,
                            format!(
                                "prefix {prefix:?} already holds the stream {:?}, not {stream:?}",
                                doc.stream
                            ),
                        ));
                    }
                    Ok(doc) => return Ok(doc.sequence),
                    // It is only a shortcut (written unsynced after the
                    // objects it counts): the keys are the truth.
                    Err(e) => tracing::warn!(
                        %stream, object = %checkpoint, error = %e,
                        "unreadable checkpoint object; resuming from the keys instead"
                    ),
                }
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error("read the checkpoint", e)),
        }
        let keys = list_keys(self.store.as_ref(), &prefix).await?;
        Ok(keys.last().map_or(0, |k| k.last()))
    }

    async fn mark(&self, stream: &StreamId) -> Result<u64, Error> {
        let mut marks = self.marks.lock().await;
        if let Some(mark) = marks.get(stream) {
            return Ok(*mark);
        }
        let mark = self.read_mark(stream).await?;
        marks.insert(stream.clone(), mark);
        Ok(mark)
    }

    async fn put_create(&self, key: String, body: Bytes) -> Result<(), Error> {
        let mut attributes = Attributes::new();
        if self.options.content_type {
            attributes.insert(Attribute::ContentType, "application/json".into());
        }
        let options = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        let path = ObjectPath::from(key.as_str());
        match self
            .store
            .put_opts(&path, PutPayload::from_bytes(body.clone()), options)
            .await
        {
            Ok(_) => Ok(()),
            // Written by an earlier attempt whose answer was lost, or by a
            // standby writing the same stream: the same events. Or by
            // another log numbered alike: taking its object for ours would
            // lose our event in silence.
            Err(object_store::Error::AlreadyExists { .. }) => {
                let held = self
                    .store
                    .get(&path)
                    .await
                    .map_err(|e| store_error(&format!("read {key}"), e))?
                    .bytes()
                    .await
                    .map_err(|e| store_error(&format!("read {key}"), e))?;
                if same_events(&held, &body) {
                    Ok(())
                } else {
                    Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "object {key} already holds other events under the same sequences: another log writes this stream under this prefix (another node, or this node before its data was lost); give each node its own prefix"
                        ),
                    ))
                }
            }
            Err(e) => Err(store_error(&format!("write {key}"), e)),
        }
    }

    async fn put_checkpoint(&self, stream: &StreamId, sequence: u64) -> Result<(), Error> {
        let prefix = self.options.prefix_for(stream.as_str());
        let doc = CheckpointDoc {
            stream: stream.as_str().to_owned(),
            sequence,
            updated_at: Timestamp::now().to_round_trip_string(),
        };
        let body = serde_json::to_vec(&doc)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("checkpoint: {e}")))?;
        let key = format!("{prefix}{CHECKPOINT_NAME}");
        // Not synced: it only saves listing on resume, it is written after
        // the objects it counts are durable, and an unreadable one falls
        // back to the keys.
        self.store
            .put(&ObjectPath::from(key.as_str()), PutPayload::from(body))
            .await
            .map(|_| ())
            .map_err(|e| store_error(&format!("write {key}"), e))
    }

    /// Syncs written objects (and their directories) of a local store.
    async fn sync(&self, keys: Vec<String>) -> Result<(), Error> {
        let Some(root) = self.options.sync_root.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut dirs = std::collections::BTreeSet::new();
            for key in keys {
                let path = root.join(&key);
                std::fs::File::open(&path)?.sync_all()?;
                if let Some(dir) = path.parent() {
                    dirs.insert(dir.to_owned());
                }
            }
            for dir in dirs {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("sync task failed: {e}")))?
        .map_err(|e| {
            Error::new(ErrorKind::Unavailable, "cannot sync written objects").with_source(e)
        })
    }

    /// Writes `records` (above the mark; or, filling gaps behind it, in
    /// the segment layout one run of consecutive sequences) and returns the
    /// last sequence durably written, with the error that stopped the rest.
    async fn write(
        &self,
        prefix: &str,
        records: Vec<(u64, Bytes)>,
    ) -> (Option<u64>, Option<Error>) {
        match self.options.layout {
            Layout::Segment => {
                let (Some(first), Some(last)) = (records.first(), records.last()) else {
                    return (None, None);
                };
                let key = segment_key(prefix, first.0, last.0);
                let mut body = Vec::with_capacity(records.iter().map(|r| r.1.len() + 1).sum());
                for (_, bytes) in &records {
                    body.extend_from_slice(bytes);
                    body.push(b'\n');
                }
                let result = match self.put_create(key.clone(), Bytes::from(body)).await {
                    Ok(()) => self.sync(vec![key]).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => (Some(last.0), None),
                    Err(e) => (None, Some(e)),
                }
            }
            Layout::PerEvent => {
                let mut puts = futures::stream::iter(records)
                    .map(|(sequence, bytes)| async move {
                        self.put_create(event_key(prefix, sequence), bytes)
                            .await
                            .map(|()| sequence)
                    })
                    .buffered(self.options.max_in_flight);
                // Results come in batch order: stop at the first failure
                // (dropping the writes in flight; create-only makes their
                // retry harmless), keeping the prefix that is written.
                let mut written = Vec::new();
                let mut error = None;
                while let Some(result) = puts.next().await {
                    match result {
                        Ok(sequence) => written.push(sequence),
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                drop(puts);
                let keys = written.iter().map(|s| event_key(prefix, *s)).collect();
                if let Err(e) = self.sync(keys).await {
                    return (None, Some(e));
                }
                (written.last().copied(), error)
            }
        }
    }
}

/// Every event and segment key directly under `prefix`, in sequence
/// order. Lists the prefix's directory without recursing, and matches the
/// rest of the prefix against the names, so any prefix works (with or
/// without `/`).
pub(crate) async fn list_keys(
    store: &dyn ObjectStore,
    prefix: &str,
) -> Result<Vec<KeyKind>, Error> {
    let directory = match prefix.rfind('/') {
        Some(at) => &prefix[..at],
        None => "",
    };
    let listed = store
        .list_with_delimiter(
            (!directory.is_empty())
                .then(|| ObjectPath::from(directory))
                .as_ref(),
        )
        .await;
    let listed = match listed {
        Ok(listed) => listed,
        Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(store_error(&format!("list {prefix}"), e)),
    };
    let mut keys: Vec<KeyKind> = listed
        .objects
        .iter()
        .filter_map(|meta| parse_key(prefix, meta.location.as_ref()))
        .collect();
    keys.sort_unstable();
    Ok(keys)
}

impl Sink for ObjectStoreSink {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let stream = first.stream().clone();
        json_only(batch)?;
        let inner = &self.inner;
        let result = async {
            let mark = inner.mark(&stream).await?;
            let records: Vec<(u64, Bytes)> = batch
                .iter()
                .filter(|r| r.sequence() > mark)
                .map(|r| (r.sequence(), r.shared_bytes()))
                .collect();
            if records.is_empty() {
                return Ok(());
            }
            let prefix = inner.options.prefix_for(stream.as_str());
            let (through, error) = inner.write(&prefix, records).await;
            if let Some(through) = through {
                // The checkpoint object lags at worst: a restart then
                // re-writes objects that exist, which create-only makes
                // harmless.
                let saved = inner.put_checkpoint(&stream, through).await;
                inner.marks.lock().await.insert(stream.clone(), through);
                if let (Err(e), None) = (saved, &error) {
                    return Err(SinkError::from(e).applied_through(through));
                }
            }
            match error {
                None => Ok(()),
                Some(e) => Err(SinkError::from(e).applied_through(through)),
            }
        }
        .await;
        self.inner.health.record(&result);
        if result.as_ref().is_err_and(|e| e.error().is_retryable()) {
            // Another writer, or the reference, may have written meanwhile:
            // read the mark again before the next batch.
            self.inner.marks.lock().await.remove(&stream);
        }
        result
    }

    /// Each event (per-event layout), or each run of consecutive events
    /// (segment layout: a segment's key names every sequence from its
    /// first through its last), goes under a key of its own, create-only;
    /// an event a segment already holds is not written again. The
    /// checkpoint stays where it is.
    async fn fill_gaps(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let stream = first.stream().clone();
        json_only(batch)?;
        let inner = &self.inner;
        let mut behind = 0;
        let result = async {
            let mark = inner.mark(&stream).await?;
            behind = batch.partition_point(|r| r.sequence() <= mark);
            let prefix = inner.options.prefix_for(stream.as_str());
            let segments = match inner.options.layout {
                Layout::Segment => list_keys(inner.store.as_ref(), &prefix).await?,
                Layout::PerEvent => Vec::new(),
            };
            let held = |sequence: u64| {
                segments
                    .iter()
                    .any(|k| k.first() <= sequence && sequence <= k.last())
            };
            let mut runs: Vec<Vec<(u64, Bytes)>> = Vec::new();
            for record in batch[..behind].iter().filter(|r| !held(r.sequence())) {
                let sequence = record.sequence();
                match runs.last_mut() {
                    Some(run)
                        if inner.options.layout == Layout::PerEvent
                            || run.last().is_some_and(|(s, _)| s + 1 == sequence) =>
                    {
                        run.push((sequence, record.shared_bytes()));
                    }
                    _ => runs.push(vec![(sequence, record.shared_bytes())]),
                }
            }
            let mut through = None;
            for run in runs {
                let (written, error) = inner.write(&prefix, run).await;
                through = written.or(through);
                if let Some(e) = error {
                    return Err(SinkError::from(e).applied_through(through));
                }
            }
            Ok(())
        }
        .await;
        self.inner.health.record(&result);
        result?;
        self.apply(&batch[behind..]).await
    }

    async fn checkpoint(&self, stream: &StreamId) -> Result<Option<u64>, SinkError> {
        let mark = self.inner.mark(stream).await?;
        Ok((mark > 0).then_some(mark))
    }

    fn health(&self) -> Health {
        self.inner.health.get()
    }
}

/// Refuses a batch in another form than JSON, the only one the sink
/// stores.
fn json_only(batch: &[Record<'_>]) -> Result<(), SinkError> {
    match batch.iter().find(|r| r.encoding().format != Format::Json) {
        Some(record) => Err(SinkError::new(
            ErrorKind::Config,
            format!(
                "the object-storage sink stores JSON objects, not {}",
                record.encoding()
            ),
        )),
        None => Ok(()),
    }
}

/// Whether two objects hold the same events: the same bytes, or, line by
/// line, events with the same `sequenceNumber` and `timestamp` (one event
/// encoded again, in another schema version say). Two logs number their
/// events alike, but do not stamp them alike.
fn same_events(held: &[u8], ours: &[u8]) -> bool {
    if held == ours {
        return true;
    }
    let lines = |bytes| <[u8]>::split(bytes, |b| *b == b'\n').filter(|line| !line.is_empty());
    lines(held).count() == lines(ours).count()
        && lines(held).zip(lines(ours)).all(|(a, b)| same_event(a, b))
}

/// Whether two JSON events are one: the same bytes, or the same
/// `sequenceNumber` and `timestamp`, both present.
fn same_event(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    let identity = |bytes: &[u8]| {
        let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let sequence = value.get("sequenceNumber")?.as_u64()?;
        let timestamp = value.get("timestamp")?.as_str()?.to_owned();
        Some((sequence, timestamp))
    };
    matches!((identity(a), identity(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_in_two_encodings_is_the_same_and_another_logs_is_not() {
        let v1 = br#"{"sequenceNumber":3,"eventType":"Heartbeat","timestamp":"2026-01-01T00:00:00.1234567+00:00"}"#;
        let v2 = br#"{"schemaVersion":2,"sequenceNumber":3,"eventType":"Heartbeat","timestamp":"2026-01-01T00:00:00.1234567+00:00","streamId":"default"}"#;
        let other = br#"{"sequenceNumber":3,"eventType":"Heartbeat","timestamp":"2026-01-01T00:00:00.1234999+00:00"}"#;
        assert!(same_events(v1, v1));
        assert!(same_events(v1, v2));
        assert!(!same_events(v1, other));
        // Without the fields, only the same bytes are the same event.
        assert!(same_events(b"{}", b"{}"));
        assert!(!same_events(br#"{"a":1}"#, br#"{"a":2}"#));
        assert!(!same_events(b"not json", b"not json either"));
        // Segments, line by line.
        let segment = |lines: &[&[u8]]| lines.join(&b'\n');
        assert!(same_events(&segment(&[v1, v1]), &segment(&[v2, v1])));
        assert!(!same_events(&segment(&[v1, v1]), &segment(&[v1, other])));
        assert!(!same_events(&segment(&[v1, v1]), &segment(&[v1])));
    }
}
