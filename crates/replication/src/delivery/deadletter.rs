//! Each sink's dead-letter log: the events it refused for good.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::record::RecordHeader;
use crate::sink::FileIdentity;
use crate::stream::StreamId;
use crate::time::Timestamp;

/// One dead-lettered event, a line of `<dir>/<stream>/<sink>.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The stream.
    pub stream: String,
    /// The sink that refused it.
    pub sink: String,
    /// The event's sequence.
    pub sequence: u64,
    /// Its type name.
    pub event_type: String,
    /// Its timestamp (JSON form).
    pub timestamp: String,
    /// The encoding of `payload`, e.g. `json/v1`.
    pub encoding: String,
    /// The error kind (`rejected`, `unsupported`, or the last transient
    /// kind when retries ran out).
    pub error_kind: String,
    /// The error.
    pub error: String,
    /// When it was dead-lettered (JSON form).
    pub dead_lettered_at: String,
    /// The event's bytes, standard base64.
    pub payload: String,
}

impl DeadLetter {
    /// A dead letter for a record.
    pub fn new(
        sink: &str,
        stream: &StreamId,
        header: &RecordHeader,
        encoding: &str,
        payload: &[u8],
        error: &crate::error::Error,
    ) -> Self {
        Self {
            stream: stream.as_str().to_owned(),
            sink: sink.to_owned(),
            sequence: header.sequence,
            event_type: header.kind.name.to_owned(),
            timestamp: header.timestamp.to_json_string(),
            encoding: encoding.to_owned(),
            error_kind: error.kind().as_str().to_owned(),
            error: error.to_string(),
            dead_lettered_at: Timestamp::now().to_json_string(),
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
        }
    }

    /// The dead letter of a record lost to damage in the log: neither its
    /// type, its timestamp nor its bytes are known (empty), `error` says
    /// where the damage is.
    pub fn unreadable(
        sink: &str,
        stream: &StreamId,
        sequence: u64,
        encoding: &str,
        error: &crate::error::Error,
    ) -> Self {
        Self {
            stream: stream.as_str().to_owned(),
            sink: sink.to_owned(),
            sequence,
            event_type: "unreadable".to_owned(),
            timestamp: String::new(),
            encoding: encoding.to_owned(),
            error_kind: error.kind().as_str().to_owned(),
            error: error.to_string(),
            dead_lettered_at: Timestamp::now().to_json_string(),
            payload: String::new(),
        }
    }

    /// The event's bytes.
    ///
    /// # Errors
    ///
    /// If `payload` is not valid base64.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.payload)
    }
}

/// An append-only JSON-lines file of dead letters, synced on every append.
#[derive(Debug)]
pub struct DeadLetterLog {
    path: PathBuf,
    file: Option<File>,
}

impl DeadLetterLog {
    /// The dead-letter log of `sink` in `stream` under `dir`.
    pub fn path(dir: &Path, stream: &str, sink: &str) -> PathBuf {
        dir.join(stream).join(format!("{sink}.jsonl"))
    }

    /// A log at `path`, created on first append.
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    /// Appends and syncs one dead letter. A log file removed or renamed
    /// (an operator clearing or archiving letters) is followed by a new
    /// one under the path; a letter whose file was removed while it went
    /// in is written again to the new file, so that no letter exists only
    /// in a file nobody can open.
    ///
    /// # Errors
    ///
    /// I/O errors, or the file removed again each time (a few times).
    pub fn append(&mut self, letter: &DeadLetter) -> io::Result<()> {
        self.append_all(std::slice::from_ref(letter))
    }

    /// [`append`](Self::append) for several letters, with one sync.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append).
    pub fn append_all(&mut self, letters: &[DeadLetter]) -> io::Result<()> {
        let mut lines = Vec::new();
        for letter in letters {
            serde_json::to_writer(&mut lines, letter).map_err(io::Error::other)?;
            lines.push(b'\n');
        }
        for _ in 0..3 {
            if let Some(file) = &self.file
                && !FileIdentity::of(&file.metadata()?).named_by(&self.path)?
            {
                self.file = None;
            }
            let file = match &mut self.file {
                Some(file) => file,
                None => {
                    if let Some(parent) = self.path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    self.file.insert(
                        OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&self.path)?,
                    )
                }
            };
            file.write_all(&lines)?;
            file.sync_data()?;
            let written = file.metadata()?;
            if !FileIdentity::unlinked(&written) {
                return Ok(());
            }
            self.file = None;
        }
        Err(io::Error::other(format!(
            "the dead-letter log {} keeps being removed as it is written",
            self.path.display()
        )))
    }

    /// Reads every complete dead letter in a log file (a torn last line is
    /// ignored).
    ///
    /// # Errors
    ///
    /// I/O errors; lines that do not parse are skipped.
    pub fn read_all(path: &Path) -> io::Result<Vec<DeadLetter>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for line in io::BufReader::new(file).lines() {
            if let Ok(letter) = serde_json::from_str(&line?) {
                out.push(letter);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::{DeadLetter, DeadLetterLog};
    use crate::error::{Error, ErrorKind};
    use crate::event::EventKind;
    use crate::record::RecordHeader;
    use crate::stream::StreamId;
    use crate::time::Timestamp;

    fn letter(sequence: u64) -> DeadLetter {
        let header = RecordHeader {
            sequence,
            timestamp: Timestamp::MIN,
            kind: EventKind {
                code: 1,
                name: "Note",
            },
            peer: None,
        };
        let error = Error::new(ErrorKind::Rejected, "refused");
        DeadLetter::new("s", &StreamId::default(), &header, "json-v1", b"{}", &error)
    }

    fn sequences(path: &std::path::Path) -> Vec<u64> {
        DeadLetterLog::read_all(path)
            .unwrap()
            .iter()
            .map(|l| l.sequence)
            .collect()
    }

    #[test]
    fn a_log_removed_or_renamed_while_open_is_followed_by_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = DeadLetterLog::path(dir.path(), "default", "s");
        let mut log = DeadLetterLog::new(path.clone());
        log.append(&letter(1)).unwrap();
        // Cleared by an operator: before, the next letters went into the
        // removed file, in neither the sink nor any letters anyone sees.
        std::fs::remove_file(&path).unwrap();
        log.append(&letter(2)).unwrap();
        assert_eq!(sequences(&path), [2]);
        // Archived by rename: it keeps what it has; the next go to a new
        // file under the name.
        let archived = dir.path().join("archived.jsonl");
        std::fs::rename(&path, &archived).unwrap();
        log.append(&letter(3)).unwrap();
        assert_eq!(sequences(&archived), [2]);
        assert_eq!(sequences(&path), [3]);
    }
}
