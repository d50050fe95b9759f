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
        // A line of its own even after a torn one (a crash in the middle of
        // an append): glued to it, the letter would not parse.
        let mut lines = vec![b'\n'];
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
                            .read(true)
                            .append(true)
                            .open(&self.path)?,
                    )
                }
            };
            let at_line_start = ends_a_line(file)?;
            file.write_all(&lines[usize::from(at_line_start)..])?;
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

    /// Reads every complete dead letter in a log file; lines that do not
    /// parse (a torn last line, a bad edit) are skipped — see
    /// [`read`](Self::read) for them.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn read_all(path: &Path) -> io::Result<Vec<DeadLetter>> {
        Ok(Self::read(path)?.letters)
    }

    /// Reads a log file: its letters, and the lines that are not one.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn read(path: &Path) -> io::Result<LetterFile> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LetterFile::default()),
            Err(e) => return Err(e),
        };
        let mut read = LetterFile::default();
        for (n, line) in io::BufReader::new(file).split(b'\n').enumerate() {
            let line = line?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice(&line) {
                Ok(letter) => read.letters.push(letter),
                Err(_) => read
                    .unreadable
                    .push((n + 1, String::from_utf8_lossy(&line).into_owned())),
            }
        }
        Ok(read)
    }
}

/// What [`DeadLetterLog::read`] found in a file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LetterFile {
    /// The letters, in order.
    pub letters: Vec<DeadLetter>,
    /// Lines that are not a letter, by line number (from 1): a write torn
    /// by a crash, or an edit gone wrong.
    pub unreadable: Vec<(usize, String)>,
}

/// Whether `file` is empty or ends with a newline: for writers of JSON
/// lines, whose next line would otherwise be glued to a line a crash tore
/// (and parse as nothing). Needs `file` opened for reading.
///
/// # Errors
///
/// I/O errors.
pub fn ends_a_line(file: &mut File) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
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
    fn a_letter_after_a_torn_line_is_kept_and_unreadable_lines_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = DeadLetterLog::path(dir.path(), "default", "s");
        DeadLetterLog::new(path.clone()).append(&letter(1)).unwrap();
        // A crash in the middle of the next letter's write.
        let mut torn = serde_json::to_vec(&letter(2)).unwrap();
        torn.truncate(torn.len() / 2);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, &torn).unwrap();
        // The restarted node's next letter starts a line of its own: before,
        // it was glued to the torn one and no reader saw it.
        DeadLetterLog::new(path.clone()).append(&letter(3)).unwrap();
        assert_eq!(sequences(&path), [1, 3]);
        let read = DeadLetterLog::read(&path).unwrap();
        assert_eq!(read.letters.len(), 2);
        assert_eq!(read.unreadable.len(), 1);
        let (line, text) = &read.unreadable[0];
        assert_eq!((*line, text.as_bytes()), (2, torn.as_slice()));
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
