//! Knobs of a stream's log.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How a stream's log makes events durable, and so when `publish` is
/// acknowledged and what a crash can lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledge after `fdatasync`. A crash of the process or the machine
    /// loses nothing that was acknowledged.
    Fsync,
    /// Acknowledge after `write`; `fdatasync` every interval. A process
    /// crash loses nothing acknowledged; a machine crash can lose the last
    /// interval.
    Interval(Duration),
    /// Acknowledge after `write`; never sync explicitly. A process crash
    /// loses nothing acknowledged; a machine crash can lose whatever the
    /// operating system had not written back.
    None,
    /// No file: a bounded in-memory ring. A process crash loses everything.
    Memory,
}

impl Durability {
    /// Whether the log has files.
    pub fn is_persistent(self) -> bool {
        !matches!(self, Self::Memory)
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fsync => f.write_str("fsync"),
            Self::Interval(every) => write!(f, "interval:{}ms", every.as_millis()),
            Self::None => f.write_str("none"),
            Self::Memory => f.write_str("memory"),
        }
    }
}

impl FromStr for Durability {
    type Err = String;

    /// `fsync`, `interval:<ms>` (or `interval`, 100 ms), `none`, `memory`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "fsync" => Ok(Self::Fsync),
            "none" => Ok(Self::None),
            "memory" => Ok(Self::Memory),
            "interval" => Ok(Self::Interval(Duration::from_millis(100))),
            other => match other
                .strip_prefix("interval:")
                .map(|ms| ms.trim_end_matches("ms").parse::<u64>())
            {
                Some(Ok(ms)) if ms > 0 => Ok(Self::Interval(Duration::from_millis(ms))),
                _ => Err(format!(
                    "unknown durability {other:?} (expected fsync, interval:<ms>, none or memory)"
                )),
            },
        }
    }
}

/// When whole segments may be deleted. The default keeps every segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete a sealed segment once every sink's checkpoint has passed it.
    pub delete_consumed: bool,
    /// Delete sealed segments older than this, unless a `required` sink
    /// still needs them; `best_effort` sinks skip ahead.
    pub max_age: Option<Duration>,
    /// Delete the oldest sealed segments while the log is larger than this,
    /// unless a `required` sink still needs them.
    pub max_bytes: Option<u64>,
}

/// Knobs of a stream's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// The durability policy.
    pub durability: Durability,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_max_bytes: u64,
    /// One sparse index entry per this many bytes of records.
    pub index_interval_bytes: u64,
    /// Records kept in memory for sinks that keep up (for `memory`, the
    /// ring's capacity).
    pub tail_max_events: usize,
    /// Bytes kept in memory for sinks that keep up (for `memory`, the
    /// ring's capacity).
    pub tail_max_bytes: usize,
    /// Bytes accepted but not yet written before `publish` waits.
    pub max_pending_bytes: usize,
    /// Which segments may be deleted.
    pub retention: Retention,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            segment_max_bytes: 64 * 1024 * 1024,
            index_interval_bytes: 64 * 1024,
            tail_max_events: 16_384,
            tail_max_bytes: 64 * 1024 * 1024,
            max_pending_bytes: 32 * 1024 * 1024,
            retention: Retention::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_reads_and_writes_its_names() {
        for (text, want) in [
            ("fsync", Durability::Fsync),
            ("none", Durability::None),
            ("memory", Durability::Memory),
            (
                "interval:250",
                Durability::Interval(Duration::from_millis(250)),
            ),
            (
                "interval:250ms",
                Durability::Interval(Duration::from_millis(250)),
            ),
            ("interval", Durability::Interval(Duration::from_millis(100))),
        ] {
            assert_eq!(text.parse::<Durability>(), Ok(want));
        }
        assert_eq!(
            Durability::Interval(Duration::from_millis(5)).to_string(),
            "interval:5ms"
        );
        for bad in ["", "fsync ", "interval:0", "interval:x", "always"] {
            assert!(bad.parse::<Durability>().is_err(), "{bad}");
        }
    }
}
