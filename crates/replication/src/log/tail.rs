//! The in-memory tail of a stream's log: the newest records, for sinks that
//! keep up (and, for `memory` durability, the whole log).

use std::collections::VecDeque;

use crate::time::Timestamp;

/// One record in the tail.
#[derive(Clone, Debug)]
pub struct TailEntry<T> {
    /// The record's sequence.
    pub sequence: u64,
    /// Its timestamp.
    pub timestamp: Timestamp,
    /// Its size in the log.
    pub bytes: usize,
    /// What the appender attached (the encoded event).
    pub item: T,
}

/// A bounded run of consecutive records.
#[derive(Debug)]
pub(crate) struct Tail<T> {
    entries: VecDeque<TailEntry<T>>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

/// The answer to [`StreamLog::read_tail`](crate::log::StreamLog::read_tail).
#[derive(Debug)]
pub enum TailRead<T> {
    /// Records from the requested sequence on.
    Entries(Vec<TailEntry<T>>),
    /// The requested sequence is older than the tail, which starts here.
    Before(u64),
    /// Nothing at or after the requested sequence yet.
    Empty,
}

impl<T: Clone> Tail<T> {
    pub(crate) fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            max_events: max_events.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    pub(crate) fn push(&mut self, entry: TailEntry<T>) {
        self.bytes += entry.bytes;
        self.entries.push_back(entry);
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Evicts the oldest records, none above `keep_after`, until one more
    /// record of `bytes` fits. Returns whether it fits (an empty tail
    /// always takes one record).
    pub(crate) fn make_room(&mut self, bytes: usize, keep_after: u64) -> bool {
        loop {
            let fits = self.entries.len() < self.max_events && self.bytes + bytes <= self.max_bytes;
            if fits || self.entries.is_empty() {
                return true;
            }
            match self.entries.front() {
                Some(front) if front.sequence <= keep_after => {
                    self.bytes -= front.bytes;
                    self.entries.pop_front();
                }
                _ => return false,
            }
        }
    }

    pub(crate) fn is_over_capacity(&self) -> bool {
        self.entries.len() > self.max_events || self.bytes > self.max_bytes
    }

    /// Drops the oldest records while over capacity, but none above
    /// `keep_after` (records a required reader still needs). Returns
    /// whether the tail is now within capacity.
    pub(crate) fn evict(&mut self, keep_after: u64) -> bool {
        while self.is_over_capacity() {
            match self.entries.front() {
                Some(front) if front.sequence <= keep_after => {
                    self.bytes -= front.bytes;
                    self.entries.pop_front();
                }
                _ => return false,
            }
        }
        true
    }

    /// The first sequence held.
    pub(crate) fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.sequence)
    }

    /// Up to `max_events` records (and about `max_bytes`; at least one)
    /// from `from` on, not past `up_to`.
    pub(crate) fn read(
        &self,
        from: u64,
        up_to: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> TailRead<T> {
        let Some(first) = self.first() else {
            return TailRead::Empty;
        };
        if from < first {
            return TailRead::Before(first);
        }
        let start = usize::try_from(from - first).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in self.entries.iter().skip(start) {
            if entry.sequence > up_to
                || out.len() >= max_events
                || (bytes >= max_bytes && !out.is_empty())
            {
                break;
            }
            bytes += entry.bytes;
            out.push(entry.clone());
        }
        if out.is_empty() {
            TailRead::Empty
        } else {
            TailRead::Entries(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sequence: u64) -> TailEntry<u64> {
        TailEntry {
            sequence,
            timestamp: Timestamp::MIN,
            bytes: 10,
            item: sequence,
        }
    }

    #[test]
    fn reads_ranges_and_reports_what_fell_out() {
        let mut tail = Tail::new(3, 1000);
        for s in 1..=5 {
            tail.push(entry(s));
            tail.evict(u64::MAX);
        }
        assert_eq!(tail.first(), Some(3));
        assert!(matches!(tail.read(1, 10, 10, 1000), TailRead::Before(3)));
        let TailRead::Entries(got) = tail.read(4, 10, 10, 1000) else {
            panic!()
        };
        assert_eq!(got.iter().map(|e| e.item).collect::<Vec<_>>(), [4, 5]);
        let TailRead::Entries(got) = tail.read(3, 4, 10, 1000) else {
            panic!()
        };
        assert_eq!(got.len(), 2, "not past up_to");
        let TailRead::Entries(got) = tail.read(3, 10, 10, 15) else {
            panic!()
        };
        assert_eq!(got.len(), 2, "about max_bytes");
        assert!(matches!(tail.read(6, 10, 10, 1000), TailRead::Empty));
    }

    #[test]
    fn makes_room_only_by_evicting_what_is_not_needed() {
        let mut tail = Tail::new(2, 1000);
        assert!(tail.make_room(10, 0), "an empty tail takes anything");
        tail.push(entry(1));
        tail.push(entry(2));
        assert!(!tail.make_room(10, 0));
        assert!(tail.make_room(10, 1));
        assert_eq!(tail.first(), Some(2));
    }

    #[test]
    fn never_evicts_what_a_required_reader_needs() {
        let mut tail = Tail::new(2, 1000);
        for s in 1..=4 {
            tail.push(entry(s));
        }
        assert!(!tail.evict(1), "2, 3, 4 are still needed");
        assert_eq!(tail.first(), Some(2));
        assert!(tail.evict(2));
        assert_eq!(tail.first(), Some(3));
    }
}
