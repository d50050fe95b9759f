//! Where each sink's position in each stream is kept.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::log::write_atomically;
use crate::stream::StreamId;
use crate::time::Timestamp;

/// Persists the highest sequence each sink has durably applied, per stream.
pub trait CheckpointStore: Send + Sync + 'static {
    /// The saved checkpoint of `sink` in `stream`.
    ///
    /// # Errors
    ///
    /// I/O errors; an unreadable checkpoint is an error, not `None`.
    fn load(&self, stream: &StreamId, sink: &str) -> io::Result<Option<u64>>;

    /// Saves a checkpoint so that a crash leaves either it or the previous
    /// one.
    ///
    /// # Errors
    ///
    /// I/O errors.
    fn save(&self, stream: &StreamId, sink: &str, sequence: u64) -> io::Result<()>;
}

/// One small JSON file per stream and sink
/// (`<dir>/<stream>/<sink>.json`), replaced atomically.
#[derive(Debug, Clone)]
pub struct FileCheckpointStore {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CheckpointFile {
    sequence: u64,
    updated_at: String,
}

impl FileCheckpointStore {
    /// A store under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, stream: &StreamId, sink: &str) -> PathBuf {
        self.dir.join(stream.as_str()).join(format!("{sink}.json"))
    }
}

impl CheckpointStore for FileCheckpointStore {
    fn load(&self, stream: &StreamId, sink: &str) -> io::Result<Option<u64>> {
        let path = self.path(stream, sink);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<CheckpointFile>(&bytes)
                .map(|c| Some(c.sequence))
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save(&self, stream: &StreamId, sink: &str, sequence: u64) -> io::Result<()> {
        let path = self.path(stream, sink);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = CheckpointFile {
            sequence,
            updated_at: Timestamp::now().to_json_string(),
        };
        let bytes = serde_json::to_vec(&file).map_err(io::Error::other)?;
        write_atomically(&path, &bytes)
    }
}

/// Keeps checkpoints in memory: for tests and `memory` streams.
#[derive(Debug, Default)]
pub struct MemoryCheckpointStore {
    saved: Mutex<HashMap<(StreamId, String), u64>>,
}

impl CheckpointStore for MemoryCheckpointStore {
    fn load(&self, stream: &StreamId, sink: &str) -> io::Result<Option<u64>> {
        let saved = self
            .saved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(saved.get(&(stream.clone(), sink.to_owned())).copied())
    }

    fn save(&self, stream: &StreamId, sink: &str, sequence: u64) -> io::Result<()> {
        let mut saved = self
            .saved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        saved.insert((stream.clone(), sink.to_owned()), sequence);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_checkpoints_round_trip_and_report_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path());
        let stream = StreamId::default();
        assert_eq!(store.load(&stream, "file").unwrap(), None);
        store.save(&stream, "file", 41).unwrap();
        store.save(&stream, "file", 42).unwrap();
        assert_eq!(store.load(&stream, "file").unwrap(), Some(42));
        std::fs::write(dir.path().join("default/file.json"), b"{").unwrap();
        assert_eq!(
            store.load(&stream, "file").unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
