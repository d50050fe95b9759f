//! The receiver's marks checkpoint: every sender's high-water mark as
//! folded from the receiver's log through a sequence, kept in
//! `DATA_DIR/receiver/<stream>.marks.json`.
//!
//! The marks live in the log (each appended event carries its origin), so
//! a receiver can always rebuild them by reading its log — but only from
//! the segments that are still there: once retention deleted the segments
//! holding a sender's last events, a restarted receiver would have
//! forgotten that sender, and take its re-sent events a second time. The
//! checkpoint keeps what the deleted segments said, and a retention hold
//! keeps every segment after the checkpoint, so that the checkpoint plus
//! the log after it always give every mark. A restart reads only the log
//! after the checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use omnirelay_replication::log::{LogReader, write_atomically};
use omnirelay_replication::{Error, Format, StreamId};
use omnirelay_resourcelease::codec;
use serde::{Deserialize, Serialize};

use crate::receiver::Mark;

/// How often the checkpoint is brought up to date (when the log moved).
pub(crate) const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The checkpoint of `stream` under `data_dir`.
pub(crate) fn path(data_dir: &Path, stream: &StreamId) -> PathBuf {
    data_dir
        .join("receiver")
        .join(format!("{}.marks.json", stream.as_str()))
}

/// The file's contents.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    stream: String,
    /// The log sequence through which the marks are folded.
    through: u64,
    senders: BTreeMap<String, Mark>,
    /// The writer behind each sender name, where known.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    writers: BTreeMap<String, String>,
}

/// Every sender's mark as folded from the log through `through`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) through: u64,
    pub(crate) marks: HashMap<String, Mark>,
    /// The writer behind each sender name, where known (the log does not
    /// say: a name whose numbering restarted after the checkpoint has
    /// none until its next batch).
    pub(crate) writers: HashMap<String, String>,
}

/// What [`Checkpoint::fold`] read.
#[derive(Debug, Default)]
pub(crate) struct Folded {
    /// Records folded.
    pub(crate) records: u64,
    /// The log's first record after the checkpoint, when records between
    /// them are gone (deleted by retention before they were folded).
    pub(crate) missing_before: Option<u64>,
    /// Stretches of sequences lost to damage in the log, read past (what
    /// they held cannot raise a mark), each with the damage.
    pub(crate) lost: Vec<(std::ops::RangeInclusive<u64>, String)>,
}

impl Checkpoint {
    /// The checkpoint at `path` for `stream`; `None` when there is none.
    /// One that cannot be read is reported and ignored: the marks are then
    /// rebuilt from the log.
    pub(crate) fn load(path: &Path, stream: &StreamId) -> Option<Self> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(
                    path = %path.display(), error = %e,
                    "the receiver's marks checkpoint cannot be read; rebuilding the marks from the log"
                );
                return None;
            }
        };
        match serde_json::from_slice::<File>(&bytes) {
            Ok(file) if file.stream == stream.as_str() => Some(Self {
                through: file.through,
                marks: file.senders.into_iter().collect(),
                writers: file.writers.into_iter().collect(),
            }),
            Ok(file) => {
                tracing::warn!(
                    path = %path.display(), found = file.stream, expected = %stream,
                    "the receiver's marks checkpoint is another stream's; rebuilding the marks from the log"
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    path = %path.display(), error = %e,
                    "the receiver's marks checkpoint is damaged; rebuilding the marks from the log"
                );
                None
            }
        }
    }

    /// Replaces the checkpoint at `path` (a crash leaves the old one or
    /// this one).
    pub(crate) fn save(&self, path: &Path, stream: &StreamId) -> std::io::Result<()> {
        let file = File {
            stream: stream.as_str().to_owned(),
            through: self.through,
            senders: self
                .marks
                .iter()
                .map(|(sender, mark)| (sender.clone(), *mark))
                .collect(),
            writers: self
                .writers
                .iter()
                .map(|(sender, writer)| (sender.clone(), writer.clone()))
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_atomically(path, &bytes)
    }

    /// Folds the records of `reader`'s log after the checkpoint and up to
    /// `upto` into the marks; the checkpoint then stands at the last one.
    /// A sender whose numbering restarted there (another writer may have
    /// taken its name over) loses its known writer.
    pub(crate) fn fold(&mut self, reader: &LogReader, upto: u64) -> Result<Folded, Error> {
        let mut folded = Folded::default();
        if upto <= self.through {
            return Ok(folded);
        }
        let epochs: HashMap<String, u64> = self
            .marks
            .iter()
            .map(|(sender, mark)| (sender.clone(), mark.epoch))
            .collect();
        let read = self.fold_records(reader, upto, &mut folded);
        let marks = &self.marks;
        self.writers
            .retain(|sender, _| marks.get(sender).map(|m| m.epoch) == epochs.get(sender).copied());
        read.map(|()| folded)
    }

    fn fold_records(
        &mut self,
        reader: &LogReader,
        upto: u64,
        folded: &mut Folded,
    ) -> Result<(), Error> {
        let from = self.through + 1;
        let mut lost = Vec::new();
        reader.visit_past_damage(
            from,
            |record| {
                if record.sequence > upto {
                    return ControlFlow::Break(());
                }
                if folded.records == 0 && record.sequence > from {
                    folded.missing_before = Some(record.sequence);
                }
                fold_origin(&mut self.marks, record.encoding.format, record.payload);
                self.through = record.sequence;
                folded.records += 1;
                ControlFlow::Continue(())
            },
            |sequences, error| lost.push((sequences, error.to_string())),
        )?;
        // Not gone before the checkpoint's next record: lost with it.
        if lost
            .first()
            .is_some_and(|(sequences, _)| *sequences.start() == from)
        {
            folded.missing_before = None;
        }
        folded.lost = lost;
        Ok(())
    }
}

/// Raises the mark of the sender of the event `bytes` (in `format`), if it
/// has an origin, to the event's.
pub(crate) fn fold_origin(marks: &mut HashMap<String, Mark>, format: Format, bytes: &[u8]) {
    let stored = match format {
        Format::Protobuf => crate::receiver::stored_origin(bytes),
        _ => None,
    };
    let origin = stored.unwrap_or_else(|| {
        codec::decode(format, bytes)
            .ok()
            .and_then(|event| crate::receiver::origin_of(&event))
    });
    if let Some((sender, mark)) = origin {
        raise(marks, &sender, mark);
    }
}

/// Raises `sender`'s mark to `mark` when that is higher (by epoch, then
/// sequence).
pub(crate) fn raise(marks: &mut HashMap<String, Mark>, sender: &str, mark: Mark) {
    match marks.get_mut(sender) {
        Some(entry) if (mark.epoch, mark.sequence) <= (entry.epoch, entry.sequence) => {}
        Some(entry) => *entry = mark,
        None => {
            marks.insert(sender.to_owned(), mark);
        }
    }
}
