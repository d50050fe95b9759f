//! The stream's `stream.json`: what a reader needs to know about a log it
//! did not open (policy, encoding, what recovery cut).

use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The contents of `stream.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamMeta {
    /// The stream id.
    pub stream: String,
    /// The durability policy, as `Durability`'s text form.
    pub durability: String,
    /// The encoding new segments are written in, e.g. `protobuf/v2`.
    pub encoding: String,
    /// Bytes cut from torn or corrupt tails over the log's life.
    pub recovery_cut_bytes_total: u64,
    /// The last recovery that cut anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_cut: Option<LastCut>,
    /// The sequence the log started after, when it did not start at 1
    /// (its sinks held records of an earlier log up to it): nothing at or
    /// below it was ever in this log, so none of it counts as lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_after: Option<u64>,
}

/// One recovery that cut a damaged tail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastCut {
    /// When, in the JSON timestamp form.
    pub at: String,
    /// The segment that was cut.
    pub segment: String,
    /// Bytes cut.
    pub bytes: u64,
    /// Why.
    pub reason: String,
}

pub(crate) const META_FILE: &str = "stream.json";

/// Reads `dir/stream.json`, if present and valid.
pub fn read_meta(dir: &Path) -> Option<StreamMeta> {
    checked_meta(dir).ok().flatten()
}

/// Reads `dir/stream.json`: `Ok(None)` when there is none, `Err(why)` when
/// it cannot be read or is not one.
pub(crate) fn checked_meta(dir: &Path) -> Result<Option<StreamMeta>, String> {
    let bytes = match std::fs::read(dir.join(META_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Replaces `dir/stream.json` atomically (write, sync, rename, sync dir).
pub(crate) fn write_meta(dir: &Path, meta: &StreamMeta) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
    write_atomically(&dir.join(META_FILE), &bytes)
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or
/// the new contents, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomically_with(path, |out| out.write_all(bytes))
}

/// As [`write_atomically`], the contents written by `write` (through a
/// buffer) instead of held in memory first: for a large file made of many
/// parts. A write that fails (a full disk) removes what it wrote.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut out = io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&tmp)?);
        write(&mut out)?;
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_data()
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(error);
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
