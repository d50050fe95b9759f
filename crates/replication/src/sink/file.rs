//! The JSON-lines file sink.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, ErrorKind, SinkError};
use crate::event::Format;
use crate::record::Record;
use crate::sink::{FileIdentity, Sink};
use crate::stream::StreamId;

/// Knobs of a [`FileSink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSinkOptions {
    /// The directory of the files.
    pub dir: PathBuf,
    /// A file is closed and a new one started past this size.
    pub max_file_bytes: u64,
    /// The top-level field of each JSON line that holds its sequence
    /// (compared without regard to ASCII case), read back on open.
    pub sequence_field: String,
}

impl FileSinkOptions {
    /// Files in `dir`, 64 MiB each, sequences in `sequenceNumber`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_file_bytes: 64 * 1024 * 1024,
            sequence_field: "sequenceNumber".to_owned(),
        }
    }
}

/// What opening a stream's files repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileRecovery {
    /// The last sequence in the files.
    pub last_sequence: Option<u64>,
    /// Bytes cut: a torn last line, or complete lines that do not parse.
    pub cut_bytes: u64,
    /// Lines (whole or torn) cut.
    pub cut_lines: u64,
}

/// Exports records as JSON lines, one event per line in the sink's
/// encoding, to `<dir>/<stream>-<first sequence>.jsonl`, rotated by size;
/// every file is kept.
///
/// Each batch is written and `fdatasync`ed before `apply` returns. On first
/// use of a stream the sink truncates a torn (or unparseable) last line,
/// reads back the last sequence, and from then on ignores anything at or
/// below it: re-delivery after a crash never duplicates a line.
#[derive(Debug, Clone)]
pub struct FileSink {
    options: Arc<FileSinkOptions>,
    streams: Arc<tokio::sync::Mutex<HashMap<StreamId, Arc<Mutex<StreamFiles>>>>>,
}

#[derive(Debug)]
struct StreamFiles {
    stream: StreamId,
    /// A write failed part-way: re-read the tail before the next one.
    damaged: bool,
    /// The open file and its path.
    file: Option<File>,
    path: PathBuf,
    len: u64,
    high_water: Option<u64>,
    recovery: FileRecovery,
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::new(ErrorKind::Unavailable, context.into()).with_source(e)
}

impl FileSink {
    /// A file sink writing under `options.dir` (created on first write).
    pub fn new(options: FileSinkOptions) -> Self {
        Self {
            options: Arc::new(options),
            streams: Arc::default(),
        }
    }

    /// The files of `stream`, oldest first.
    ///
    /// # Errors
    ///
    /// I/O errors listing the directory.
    pub fn files(&self, stream: &StreamId) -> io::Result<Vec<PathBuf>> {
        list_files(&self.options.dir, stream)
    }

    /// What opening `stream`'s files repaired (opening them if needed).
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub async fn recovery(&self, stream: &StreamId) -> Result<FileRecovery, Error> {
        let files = self.stream_files(stream).await?;
        let files = files.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(files.recovery.clone())
    }

    async fn stream_files(&self, stream: &StreamId) -> Result<Arc<Mutex<StreamFiles>>, Error> {
        let mut streams = self.streams.lock().await;
        if let Some(files) = streams.get(stream) {
            return Ok(files.clone());
        }
        let (options, id) = (self.options.clone(), stream.clone());
        let files = tokio::task::spawn_blocking(move || StreamFiles::open(&options, id))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Internal, "file sink task failed").with_source(e)
            })??;
        let files = Arc::new(Mutex::new(files));
        streams.insert(stream.clone(), files.clone());
        Ok(files)
    }
}

fn file_name(stream: &StreamId, first: u64) -> String {
    format!("{stream}-{first:020}.jsonl")
}

fn list_files(dir: &Path, stream: &StreamId) -> io::Result<Vec<PathBuf>> {
    let prefix = format!("{stream}-");
    let mut out: Vec<(u64, PathBuf)> = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(first) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".jsonl"))
            .filter(|digits| digits.len() == 20)
            .and_then(|digits| digits.parse().ok())
        {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// The sequence in a JSON line's `field`, compared without regard to case.
fn sequence_of(line: &[u8], field: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let (_, found) = value
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(field))?;
    match found {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

impl StreamFiles {
    /// Opens the newest file of the stream, cutting a damaged tail.
    fn open(options: &FileSinkOptions, stream: StreamId) -> Result<Self, Error> {
        // Retrying never turns a file into a directory.
        if options.dir.exists() && !options.dir.is_dir() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the file sink's dir {} is not a directory",
                    options.dir.display()
                ),
            ));
        }
        let mut recovery = FileRecovery::default();
        let mut files = list_files(&options.dir, &stream)
            .map_err(io_error(format!("cannot list {}", options.dir.display())))?;
        while let Some(path) = files.last().cloned() {
            let (keep, last, cut_lines) = scan_tail(&path, &options.sequence_field)
                .map_err(io_error(format!("cannot read {}", path.display())))?;
            let len = std::fs::metadata(&path)
                .map_err(io_error(format!("cannot stat {}", path.display())))?
                .len();
            if keep < len {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error(format!("cannot open {}", path.display())))?;
                file.set_len(keep)
                    .and_then(|()| file.sync_all())
                    .map_err(io_error(format!("cannot truncate {}", path.display())))?;
                recovery.cut_bytes += len - keep;
                recovery.cut_lines += cut_lines;
                tracing::warn!(file = %path.display(), bytes = len - keep, lines = cut_lines, "file sink cut a damaged last line");
            }
            if let Some(last) = last {
                recovery.last_sequence = Some(last);
                break;
            }
            // Nothing readable left in the newest file: drop it and look
            // at the one before.
            std::fs::remove_file(&path)
                .map_err(io_error(format!("cannot remove {}", path.display())))?;
            files.pop();
        }
        Ok(Self {
            stream,
            damaged: false,
            file: None,
            path: PathBuf::new(),
            len: 0,
            high_water: recovery.last_sequence,
            recovery,
        })
    }

    fn write(
        &mut self,
        options: &FileSinkOptions,
        first: u64,
        lines: &[u8],
        last: u64,
    ) -> io::Result<()> {
        if self.damaged {
            let repaired = Self::open(options, self.stream.clone()).map_err(io::Error::other)?;
            *self = repaired;
        }
        let written = self.write_lines(options, first, lines);
        match written {
            Ok(()) => {
                self.high_water = Some(last);
                Ok(())
            }
            Err(e) => {
                self.file = None;
                self.damaged = true;
                Err(e)
            }
        }
    }

    /// Writes `lines` to the stream's current file; again to a new one
    /// while the file they went to was removed meanwhile (a few times at
    /// most: then an error, which delivery retries).
    fn write_lines(
        &mut self,
        options: &FileSinkOptions,
        first: u64,
        lines: &[u8],
    ) -> io::Result<()> {
        for _ in 0..3 {
            if self.write_once(options, first, lines)? {
                return Ok(());
            }
        }
        Err(io::Error::other(format!(
            "the export file of stream {} keeps being removed as it is written",
            self.stream
        )))
    }

    /// Writes `lines` to the stream's current file (a new one when there
    /// is none, or it is full); `false` when the file was removed before
    /// they were durable under its name.
    fn write_once(
        &mut self,
        options: &FileSinkOptions,
        first: u64,
        lines: &[u8],
    ) -> io::Result<bool> {
        // Removed or renamed since the last batch: a new file.
        if let Some(file) = &self.file
            && !FileIdentity::of(&file.metadata()?).named_by(&self.path)?
        {
            self.file = None;
        }
        if self.file.is_none() || self.len >= options.max_file_bytes {
            let newest = list_files(&options.dir, &self.stream)?.pop();
            let path = match newest {
                Some(path)
                    if self.file.is_none()
                        && std::fs::metadata(&path)?.len() < options.max_file_bytes =>
                {
                    path
                }
                _ => options.dir.join(file_name(&self.stream, first)),
            };
            std::fs::create_dir_all(&options.dir)?;
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            self.len = file.metadata()?.len();
            if self.len == 0 {
                File::open(&options.dir)?.sync_all()?;
            }
            self.file = Some(file);
            self.path = path;
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("no open file"))?;
        file.write_all(lines)?;
        file.sync_data()?;
        self.len += lines.len() as u64;
        // Removed or renamed while the lines went in (an operator cleaning
        // up, a rotation by rename): the next batch starts a new file.
        // What a removed file got is lost to every reader, so it goes to
        // the new file too; a renamed one keeps it.
        let opened = file.metadata()?;
        if !FileIdentity::of(&opened).named_by(&self.path)? {
            self.file = None;
            if FileIdentity::unlinked(&opened) {
                tracing::warn!(
                    file = %self.path.display(), stream = %self.stream,
                    "file sink: the export file was removed while open; writing its last batch again to a new file"
                );
                return Ok(false);
            }
            tracing::info!(
                file = %self.path.display(), stream = %self.stream,
                "file sink: the export file was renamed; the next batch starts a new file"
            );
        }
        Ok(true)
    }
}

/// Finds the end of the last good line of a file: returns the length to
/// keep, the last line's sequence, and how many lines would be cut.
fn scan_tail(path: &Path, field: &str) -> io::Result<(u64, Option<u64>, u64)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut chunk = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(chunk);
        let mut bytes = Vec::with_capacity((len - start) as usize);
        file.seek(SeekFrom::Start(start))?;
        file.read_to_end(&mut bytes)?;
        let mut end = bytes.len();
        let mut cut_lines = 0;
        // A torn last line has no newline.
        if bytes.last() != Some(&b'\n') && !bytes.is_empty() {
            match bytes.iter().rposition(|b| *b == b'\n') {
                Some(nl) => end = nl + 1,
                None if start == 0 => end = 0,
                None => {
                    chunk *= 2;
                    continue;
                }
            }
            cut_lines += 1;
        }
        // Walk back over complete lines until one parses.
        loop {
            if end == 0 {
                return Ok((start, None, cut_lines));
            }
            let line_start = match bytes[..end - 1].iter().rposition(|b| *b == b'\n') {
                Some(nl) => nl + 1,
                None if start == 0 => 0,
                None => break,
            };
            if let Some(sequence) = sequence_of(&bytes[line_start..end - 1], field) {
                return Ok((start + end as u64, Some(sequence), cut_lines));
            }
            cut_lines += 1;
            end = line_start;
        }
        if start == 0 {
            return Ok((0, None, cut_lines));
        }
        chunk *= 2;
    }
}

impl Sink for FileSink {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        let Some(first_record) = batch.first() else {
            return Ok(());
        };
        let files = self.stream_files(first_record.stream()).await?;
        let high_water = files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .high_water;
        let mut lines = Vec::with_capacity(batch.iter().map(|r| r.bytes().len() + 1).sum());
        let mut first = None;
        let mut last = None;
        let mut refused = None;
        for record in batch {
            if high_water.is_some_and(|hw| record.sequence() <= hw) {
                continue;
            }
            if record.encoding().format != Format::Json {
                return Err(SinkError::new(
                    ErrorKind::Config,
                    format!("the file sink writes JSON lines, not {}", record.encoding()),
                ));
            }
            if record.bytes().contains(&b'\n') {
                refused = Some(record.sequence());
                break;
            }
            first.get_or_insert(record.sequence());
            last = Some(record.sequence());
            lines.extend_from_slice(record.bytes());
            lines.push(b'\n');
        }
        if let (Some(first), Some(last)) = (first, last) {
            let options = self.options.clone();
            let files = files.clone();
            tokio::task::spawn_blocking(move || {
                files
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write(&options, first, &lines, last)
            })
            .await
            .map_err(|e| {
                SinkError::new(ErrorKind::Internal, format!("file sink task failed: {e}"))
            })?
            .map_err(|e| {
                // The file may hold part of the batch: the next write
                // re-reads the tail first (see `StreamFiles::write`).
                SinkError::from(
                    Error::new(ErrorKind::Unavailable, "cannot write the export file")
                        .with_source(e),
                )
            })?;
        }
        match refused {
            None => Ok(()),
            Some(sequence) => {
                let err = SinkError::new(
                    ErrorKind::Rejected,
                    format!("sequence {sequence} is not a single JSON line"),
                );
                Err(err.applied_through(last.or(high_water)))
            }
        }
    }

    async fn checkpoint(&self, stream: &StreamId) -> Result<Option<u64>, SinkError> {
        let files = self.stream_files(stream).await?;
        Ok(files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .high_water)
    }
}
