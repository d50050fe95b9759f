//! Gap-free sequence assignment, free of I/O.

use crate::error::{Error, ErrorKind};

/// Hands out the sequence numbers of one stream: each call to
/// [`Sequencer::advance`] returns the last one plus one, with no gaps.
///
/// Sequences stay within `1..=i64::MAX` so that every schema (the reference
/// stores them as a signed 64-bit integer) can carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequencer {
    last: u64,
}

impl Sequencer {
    /// The largest sequence handed out.
    pub const MAX: u64 = i64::MAX as u64;

    /// A sequencer whose first sequence is `last + 1` (`last` = 0 starts at
    /// 1; after a restart, `last` is the highest sequence recovered).
    pub const fn starting_after(last: u64) -> Self {
        Self { last }
    }

    /// The next sequence.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Internal`] once [`Sequencer::MAX`] has been handed out.
    pub fn advance(&mut self) -> Result<u64, Error> {
        if self.last >= Self::MAX {
            return Err(Error::new(
                ErrorKind::Internal,
                "sequence space of the stream is exhausted",
            ));
        }
        self.last += 1;
        Ok(self.last)
    }

    /// The last sequence handed out (or the starting point).
    pub const fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sequences_are_gap_free_from_the_start(start in 0u64..1_000_000, n in 1usize..200) {
            let mut seq = Sequencer::starting_after(start);
            let got: Vec<u64> = (0..n).map(|_| seq.advance().unwrap()).collect();
            let want: Vec<u64> = (start + 1..=start + n as u64).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(seq.last(), start + n as u64);
        }
    }

    #[test]
    fn refuses_to_overflow_the_signed_range() {
        let mut seq = Sequencer::starting_after(Sequencer::MAX - 1);
        assert_eq!(seq.advance().unwrap(), Sequencer::MAX);
        let err = seq.advance().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert_eq!(seq.last(), Sequencer::MAX);
    }
}
