//! Prefixes and object keys.

use omnirelay_replication::{Error, ErrorKind};

/// The prefix of the stream `default`, as the reference names it.
pub const DEFAULT_PREFIX: &str = "resourcelease/";

/// The name, under a stream's prefix, of the object holding the sink's
/// checkpoint of that stream (no `.json` extension, so tools listing the
/// reference's `*.json` keys do not see it).
pub const CHECKPOINT_NAME: &str = "omnirelay-checkpoint";

/// How records become objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Layout {
    /// One object per event, the reference's layout:
    /// `<prefix><20-digit sequence>.json`.
    #[default]
    PerEvent,
    /// One object per batch, JSON lines:
    /// `<prefix><first>-<last>.jsonl` (20 digits each).
    Segment,
}

/// Checks a key prefix: 1 to 512 characters of ASCII letters, digits, `_`,
/// `-`, `.` and `/`, not starting with `/`, with no empty or `.`/`..`
/// segment (an `a//b` or `a/../b` would name another place than it
/// says).
///
/// # Errors
///
/// [`ErrorKind::Config`] naming the problem.
pub fn validate_prefix(prefix: &str) -> Result<(), Error> {
    let invalid = |why: &str| {
        Err(Error::new(
            ErrorKind::Config,
            format!("invalid key prefix {prefix:?}: {why}"),
        ))
    };
    if prefix.is_empty() {
        return invalid("must not be empty");
    }
    if prefix.len() > 512 {
        return invalid("longer than 512 characters");
    }
    if prefix.starts_with('/') {
        return invalid("must not start with '/'");
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')))
    {
        return invalid(&format!(
            "character {c:?} is not allowed (use ASCII letters, digits, '_', '-', '.', '/')"
        ));
    }
    let segments: Vec<&str> = prefix.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if *segment == "." || *segment == ".." {
            return invalid("'.' and '..' segments are not allowed");
        }
        // The part after the last '/' may be empty (a directory prefix).
        if segment.is_empty() && i != last {
            return invalid("empty segments ('//') are not allowed");
        }
    }
    Ok(())
}

/// The prefix of a stream that has none configured: the default prefix's
/// directory, then the stream id and `/`.
pub(crate) fn derived_prefix(base: &str, stream: &str) -> String {
    let directory = match base.rfind('/') {
        Some(at) => &base[..=at],
        None => "",
    };
    format!("{directory}{stream}/")
}

/// The key of one event.
pub(crate) fn event_key(prefix: &str, sequence: u64) -> String {
    format!("{prefix}{sequence:020}.json")
}

/// The key of a segment.
pub(crate) fn segment_key(prefix: &str, first: u64, last: u64) -> String {
    format!("{prefix}{first:020}-{last:020}.jsonl")
}

/// What a key under a prefix names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyKind {
    /// One event.
    Event(u64),
    /// A segment of events from the first through the last sequence.
    Segment(u64, u64),
}

impl KeyKind {
    /// The first sequence it holds.
    pub fn first(self) -> u64 {
        match self {
            Self::Event(s) | Self::Segment(s, _) => s,
        }
    }

    /// The last sequence it holds.
    pub fn last(self) -> u64 {
        match self {
            Self::Event(s) | Self::Segment(_, s) => s,
        }
    }
}

fn digits(text: &str) -> Option<u64> {
    (text.len() == 20 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Parses `key` as an event or segment key directly under `prefix` (the
/// reference's parser got this wrong for prefixes containing `/`: it
/// compared the prefix against the file name alone).
pub fn parse_key(prefix: &str, key: &str) -> Option<KeyKind> {
    let name = key.strip_prefix(prefix)?;
    if let Some(stem) = name.strip_suffix(".json") {
        return digits(stem).map(KeyKind::Event);
    }
    let stem = name.strip_suffix(".jsonl")?;
    let (first, last) = stem.split_once('-')?;
    let (first, last) = (digits(first)?, digits(last)?);
    (first <= last).then_some(KeyKind::Segment(first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_reference_form_and_parse_back_under_any_prefix() {
        assert_eq!(
            event_key(DEFAULT_PREFIX, 1),
            "resourcelease/00000000000000000001.json"
        );
        for prefix in ["resourcelease/", "region/eu/", "events-", "a"] {
            assert_eq!(
                parse_key(prefix, &event_key(prefix, 42)),
                Some(KeyKind::Event(42)),
                "{prefix}"
            );
            assert_eq!(
                parse_key(prefix, &segment_key(prefix, 3, 9)),
                Some(KeyKind::Segment(3, 9))
            );
        }
        for other in [
            "resourcelease/users/00000000000000000001.json",
            "resourcelease/0000000000000000001.json",
            "resourcelease/00000000000000000001.JSON",
            "resourcelease/omnirelay-checkpoint",
            "other/00000000000000000001.json",
            "resourcelease/00000000000000000009-00000000000000000003.jsonl",
        ] {
            assert_eq!(parse_key(DEFAULT_PREFIX, other), None, "{other}");
        }
    }

    #[test]
    fn prefixes_are_validated() {
        for good in ["resourcelease/", "a", "region/eu-1/", "events-", "x/y.z_"] {
            assert!(validate_prefix(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/abs/", "a//b/", "a/../b/", "./a/", "a b/", "a\\b", "ä/",
        ] {
            let err = validate_prefix(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn other_streams_get_a_directory_beside_the_default() {
        assert_eq!(
            derived_prefix("resourcelease/", "users"),
            "resourcelease/users/"
        );
        assert_eq!(derived_prefix("region/events-", "users"), "region/users/");
        assert_eq!(derived_prefix("events-", "users"), "users/");
    }
}
