//! The in-memory tail of a stream's log: the newest batches, for sinks that
//! keep up (and, for `memory` durability, the whole log).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use crate::log::LogBatch;
use crate::log::frame::frame_len;

/// Part of a batch in the tail.
#[derive(Debug)]
pub struct TailSlice<B> {
    /// The batch.
    pub batch: Arc<B>,
    /// Indexes into the batch.
    pub range: Range<usize>,
}

impl<B> Clone for TailSlice<B> {
    fn clone(&self) -> Self {
        Self {
            batch: self.batch.clone(),
            range: self.range.clone(),
        }
    }
}

struct Held<B> {
    batch: Arc<B>,
    first: u64,
    count: usize,
    bytes: usize,
}

impl<B> Held<B> {
    fn last(&self) -> u64 {
        self.first + self.count as u64 - 1
    }
}

/// A bounded run of consecutive batches.
pub(crate) struct Tail<B> {
    held: VecDeque<Held<B>>,
    events: usize,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

/// The answer to [`StreamLog::read_tail`](crate::log::StreamLog::read_tail).
#[derive(Debug)]
pub enum TailRead<B> {
    /// Records from the requested sequence on.
    Slices(Vec<TailSlice<B>>),
    /// The requested sequence is older than the tail, which starts here.
    Before(u64),
    /// Nothing at or after the requested sequence yet.
    Empty,
}

/// The bytes a batch takes in the log.
pub(crate) fn batch_bytes<B: LogBatch>(batch: &B) -> usize {
    range_bytes(batch, 0..batch.len())
}

/// The bytes the records in `range` of a batch take in the log.
fn range_bytes<B: LogBatch>(batch: &B, range: Range<usize>) -> usize {
    frame_len(0) * range.len() + batch.payloads_len(range)
}

impl<B: LogBatch> Tail<B> {
    pub(crate) fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            held: VecDeque::new(),
            events: 0,
            bytes: 0,
            max_events: max_events.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    pub(crate) fn push(&mut self, batch: Arc<B>, bytes: usize) {
        let count = batch.len();
        if count == 0 {
            return;
        }
        self.events += count;
        self.bytes += bytes;
        self.held.push_back(Held {
            first: batch.first_sequence(),
            batch,
            count,
            bytes,
        });
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    fn pop_front(&mut self) -> Option<Held<B>> {
        let held = self.held.pop_front()?;
        self.events -= held.count;
        self.bytes -= held.bytes;
        Some(held)
    }

    /// Evicts the oldest batches, none with records above `keep_after`,
    /// until `events` more records of `bytes` fit. Returns whether they fit
    /// (an empty tail always takes one batch). Evicted batches are handed
    /// back so that they can be dropped outside the lock.
    pub(crate) fn make_room(
        &mut self,
        events: usize,
        bytes: usize,
        keep_after: u64,
        evicted: &mut Vec<Arc<B>>,
    ) -> bool {
        loop {
            let fits =
                self.events + events <= self.max_events && self.bytes + bytes <= self.max_bytes;
            if fits || self.held.is_empty() {
                return true;
            }
            match self.held.front() {
                Some(front) if front.last() <= keep_after => {
                    if let Some(held) = self.pop_front() {
                        evicted.push(held.batch);
                    }
                }
                _ => return false,
            }
        }
    }

    /// Evicts the oldest batches while over capacity (a cache), handing
    /// them back to be dropped outside the lock.
    pub(crate) fn trim(&mut self, evicted: &mut Vec<Arc<B>>) {
        while self.held.len() > 1 && (self.events > self.max_events || self.bytes > self.max_bytes)
        {
            if let Some(held) = self.pop_front() {
                evicted.push(held.batch);
            }
        }
    }

    /// The first sequence held.
    pub(crate) fn first(&self) -> Option<u64> {
        self.held.front().map(|h| h.first)
    }

    /// Up to `max_events` records (and about `max_bytes`; at least one)
    /// from `from` on, not past `up_to`.
    pub(crate) fn read(
        &self,
        from: u64,
        up_to: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> TailRead<B> {
        let Some(first) = self.first() else {
            return TailRead::Empty;
        };
        if from < first {
            return TailRead::Before(first);
        }
        // The batch holding `from`: batches are consecutive, search by last.
        let start = self.held.partition_point(|h| h.last() < from);
        let mut out = Vec::new();
        let (mut events, mut bytes) = (0usize, 0usize);
        let mut next = from;
        'batches: for held in self.held.iter().skip(start) {
            let begin = usize::try_from(next - held.first).unwrap_or(usize::MAX);
            // The common case: the rest of the batch fits.
            let through_up_to = up_to.checked_sub(held.first).map_or(0, |n| {
                usize::try_from(n).unwrap_or(usize::MAX).saturating_add(1)
            });
            let limit = through_up_to
                .min(held.count)
                .min(begin.saturating_add(max_events.saturating_sub(events)));
            if limit > begin {
                let more = range_bytes(held.batch.as_ref(), begin..limit);
                if bytes + more <= max_bytes {
                    out.push(TailSlice {
                        batch: held.batch.clone(),
                        range: begin..limit,
                    });
                    events += limit - begin;
                    bytes += more;
                    if limit < held.count {
                        break;
                    }
                    next = held.first + held.count as u64;
                    continue;
                }
            }
            let mut end = begin;
            while end < held.count {
                let sequence = held.first + end as u64;
                if sequence > up_to || events >= max_events || (bytes >= max_bytes && events > 0) {
                    if end > begin {
                        out.push(TailSlice {
                            batch: held.batch.clone(),
                            range: begin..end,
                        });
                    }
                    break 'batches;
                }
                bytes += frame_len(held.batch.payload(end).len());
                events += 1;
                end += 1;
            }
            if end > begin {
                out.push(TailSlice {
                    batch: held.batch.clone(),
                    range: begin..end,
                });
            }
            next = held.first + held.count as u64;
        }
        if out.is_empty() {
            TailRead::Empty
        } else {
            TailRead::Slices(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::tests::TestBatch;

    fn batch(first: u64, count: usize) -> Arc<TestBatch> {
        Arc::new(TestBatch::new(first, count))
    }

    fn sequences(read: TailRead<TestBatch>) -> Vec<u64> {
        match read {
            TailRead::Slices(slices) => slices
                .iter()
                .flat_map(|s| s.range.clone().map(|i| s.batch.first + i as u64))
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn reads_ranges_across_batches_and_reports_what_fell_out() {
        let mut tail = Tail::new(6, 1_000_000);
        let mut evicted = Vec::new();
        for first in [1, 3, 5, 7] {
            tail.push(batch(first, 2), 60);
            tail.trim(&mut evicted);
        }
        assert_eq!(tail.first(), Some(3));
        assert_eq!(evicted.len(), 1);
        assert!(matches!(
            tail.read(1, 100, 10, usize::MAX),
            TailRead::Before(3)
        ));
        assert_eq!(
            sequences(tail.read(4, 100, 10, usize::MAX)),
            [4, 5, 6, 7, 8]
        );
        assert_eq!(
            sequences(tail.read(4, 6, 10, usize::MAX)),
            [4, 5, 6],
            "not past up_to"
        );
        assert_eq!(
            sequences(tail.read(4, 100, 2, usize::MAX)),
            [4, 5],
            "max_events"
        );
        assert_eq!(sequences(tail.read(4, 100, 10, 1)), [4], "at least one");
        assert!(matches!(tail.read(9, 100, 10, usize::MAX), TailRead::Empty));
    }

    /// What `read` must return, one record at a time: from `from`, not past
    /// `up_to`, at most `max_events`, and another record only while fewer
    /// than `max_bytes` are taken (at least one).
    fn expected(
        batches: &[Arc<TestBatch>],
        from: u64,
        up_to: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Vec<u64> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for b in batches {
            for i in 0..b.len() {
                let sequence = b.first + i as u64;
                if sequence < from {
                    continue;
                }
                if sequence > up_to
                    || out.len() >= max_events
                    || (bytes >= max_bytes && !out.is_empty())
                {
                    return out;
                }
                bytes += frame_len(b.payload(i).len());
                out.push(sequence);
            }
        }
        out
    }

    #[test]
    fn whole_batch_reads_match_record_by_record_limits() {
        let batches: Vec<_> = [(1, 3), (4, 1), (5, 4), (9, 2)]
            .into_iter()
            .map(|(first, count)| batch(first, count))
            .collect();
        let mut tail = Tail::new(100, usize::MAX);
        for b in &batches {
            tail.push(b.clone(), batch_bytes(b.as_ref()));
        }
        let one = frame_len(batches[0].payload(0).len());
        for from in 1..=11 {
            for up_to in 0..=11 {
                for max_events in 1..=11 {
                    for max_bytes in [1, one, one + 1, 2 * one, 3 * one + 5, 7 * one, usize::MAX] {
                        assert_eq!(
                            sequences(tail.read(from, up_to, max_events, max_bytes)),
                            expected(&batches, from, up_to, max_events, max_bytes),
                            "from {from} up_to {up_to} max_events {max_events} max_bytes {max_bytes}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn makes_room_only_by_evicting_what_is_not_needed() {
        let mut tail = Tail::new(4, 1_000_000);
        let mut evicted = Vec::new();
        assert!(
            tail.make_room(10, 10, 0, &mut evicted),
            "an empty tail takes anything"
        );
        tail.push(batch(1, 2), 60);
        tail.push(batch(3, 2), 60);
        assert!(!tail.make_room(2, 60, 0, &mut evicted));
        assert!(
            !tail.make_room(2, 60, 1, &mut evicted),
            "1..=2 is one batch: 2 is needed"
        );
        assert!(tail.make_room(2, 60, 2, &mut evicted));
        assert_eq!(tail.first(), Some(3));
    }
}
