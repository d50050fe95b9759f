//! The receiver's quarantine: events a sender sent that this receiver
//! cannot read (an unknown future schema version or event type). They are
//! kept, synced, counted and acknowledged — never dropped, never a crash —
//! and an operator (or a newer receiver) can take them from
//! `DATA_DIR/quarantine/<stream>.jsonl`.

use std::fs::OpenOptions;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use omnirelay_replication::delivery::ends_a_line;
use omnirelay_replication::{Error, ErrorKind, Format, StreamId, Timestamp};
use serde::{Deserialize, Serialize};

/// An event the receiver could not read, as it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// Its sequence at the sender.
    pub sequence: u64,
    /// The format it came in.
    pub format: Format,
    /// Its bytes.
    pub payload: Vec<u8>,
    /// Why it could not be read.
    pub reason: String,
}

/// One quarantined event: a line of the quarantine file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quarantined {
    /// The sender's name.
    pub sender: String,
    /// The sender's numbering epoch.
    pub epoch: u64,
    /// The event's sequence at the sender.
    pub sequence: u64,
    /// `protobuf` or `json`.
    pub format: String,
    /// Why it could not be read.
    pub reason: String,
    /// When it arrived (JSON time form).
    pub received_at: String,
    /// Its bytes, standard base64.
    pub payload: String,
}

impl Quarantined {
    /// The quarantined form of `unreadable` from `sender` in `epoch`.
    pub fn new(sender: &str, epoch: u64, unreadable: &Unreadable) -> Self {
        Self {
            sender: sender.to_owned(),
            epoch,
            sequence: unreadable.sequence,
            format: unreadable.format.to_string(),
            reason: unreadable.reason.clone(),
            received_at: Timestamp::now().to_json_string(),
            payload: base64::engine::general_purpose::STANDARD.encode(&unreadable.payload),
        }
    }
}

/// The quarantine file of a stream, `DATA_DIR/quarantine/<stream>.jsonl`.
pub fn path(data_dir: &Path, stream: &StreamId) -> PathBuf {
    data_dir
        .join("quarantine")
        .join(format!("{}.jsonl", stream.as_str()))
}

fn io_error(what: &str, path: &Path, err: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("cannot {what} the quarantine {}", path.display()),
    )
    .with_source(err)
}

/// Appends and syncs `events`.
///
/// # Errors
///
/// I/O errors (then none of them counts as received).
pub fn append(path: &Path, events: &[Quarantined]) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error("create", path, e))?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(|e| io_error("open", path, e))?;
    // A line of its own even after one a crash tore.
    let mut lines = Vec::new();
    if !ends_a_line(&mut file).map_err(|e| io_error("read", path, e))? {
        lines.push(b'\n');
    }
    for event in events {
        serde_json::to_writer(&mut lines, event)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("a quarantined event: {e}")))?;
        lines.push(b'\n');
    }
    file.write_all(&lines)
        .and_then(|()| file.sync_data())
        .map_err(|e| io_error("write", path, e))
}

/// Every complete line of the quarantine file (none when it is missing; a
/// torn last line is ignored).
///
/// # Errors
///
/// I/O errors.
pub fn read_all(path: &Path) -> Result<Vec<Quarantined>, Error> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("read", path, e)),
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| io_error("read", path, e))?;
        if let Ok(event) = serde_json::from_str(&line) {
            out.push(event);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{Quarantined, Unreadable, append, read_all};
    use omnirelay_replication::Format;

    fn quarantined(sequence: u64) -> Quarantined {
        Quarantined::new(
            "sender",
            1,
            &Unreadable {
                sequence,
                format: Format::Json,
                payload: b"{}".to_vec(),
                reason: "a future version".to_owned(),
            },
        )
    }

    #[test]
    fn an_event_after_a_torn_line_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("default.jsonl");
        append(&path, &[quarantined(1)]).unwrap();
        // A crash in the middle of the next write.
        let mut torn = serde_json::to_vec(&quarantined(2)).unwrap();
        torn.truncate(torn.len() / 2);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, &torn).unwrap();
        append(&path, &[quarantined(3)]).unwrap();
        let sequences: Vec<u64> = read_all(&path)
            .unwrap()
            .iter()
            .map(|q| q.sequence)
            .collect();
        assert_eq!(sequences, [1, 3]);
    }
}
