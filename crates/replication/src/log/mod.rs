//! The durable log: one append-only, segmented, checksummed log per stream.
//!
//! - Records are framed with their length and a CRC32C ([`frame`]) in
//!   segment files named by their first sequence
//!   (`00000000000000000001.seg`), with a sparse sequence → offset index
//!   beside each sealed segment (`.idx`).
//! - [`StreamLog`] appends through a writer thread that commits everything
//!   queued with one write and one `fdatasync` (group commit), under the
//!   stream's [`Durability`] policy; without a sync to wait for, a
//!   publisher writes the queue itself when nobody else is writing.
//! - On open, recovery checks the newest segment, cuts a torn or damaged
//!   tail and reports what it cut ([`Recovery`]); it never needs a manual
//!   step.
//! - [`LogReader`] reads from any sequence, read-only and without a lock,
//!   beside a running writer, and verifies the files.

use crate::time::Timestamp;

/// Consecutive records to append: what [`StreamLog`] stores and keeps in
/// its in-memory tail.
pub trait LogBatch: Send + Sync + 'static {
    /// The sequence of the first record.
    fn first_sequence(&self) -> u64;
    /// How many records.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The timestamp of the `index`-th record.
    fn timestamp(&self, index: usize) -> Timestamp;
    /// The encoded `index`-th record, in the log's encoding.
    fn payload(&self, index: usize) -> &[u8];
    /// The total length of the payloads of the records in `range`.
    fn payloads_len(&self, range: std::ops::Range<usize>) -> usize {
        range.map(|i| self.payload(i).len()).sum()
    }
}

mod disk;
pub mod frame;
mod meta;
mod options;
mod reader;
pub(crate) mod segment;
mod tail;
#[cfg(test)]
mod tests;
mod writer;

pub use disk::Recovery;
pub use meta::{LastCut, StreamMeta, read_meta};
pub use meta::{write_atomically, write_atomically_with};
pub use options::{Durability, LogOptions, Retention};
pub(crate) use reader::{BatchReader, Damaged};
pub use reader::{LogReader, RecordRef, Records, StoredRecord, VerifyProgress, VerifyReport};
pub use tail::{TailRead, TailSlice};
pub use writer::{LogStats, Progress, StreamLog};
