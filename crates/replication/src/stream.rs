//! Stream (shard) identifiers.

use std::fmt;
use std::sync::{Arc, LazyLock};

use crate::error::{Error, ErrorKind};

/// The name of a replication stream (a shard). Each stream has its own
/// gap-free sequence starting at 1.
///
/// A stream id is 1 to 128 characters of ASCII letters, digits, `_`, `-` and
/// `.`, not starting with `.`: it is used verbatim in file names, table
/// names and message subjects, so it is validated once, here. Cloning is
/// cheap.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// The longest accepted stream id.
    pub const MAX_LEN: usize = 128;
    /// The stream events go to when none is named.
    pub const DEFAULT: &'static str = "default";

    /// Validates `name` as a stream id.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] naming the offending input.
    pub fn new(name: &str) -> Result<Self, Error> {
        validate_name("stream id", name)?;
        Ok(Self(Arc::from(name)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks that `name` is safe in file names, table names and message
/// subjects: 1 to 128 ASCII letters, digits, `_`, `-` and `.`, not starting
/// with `.`.
///
/// # Errors
///
/// [`ErrorKind::Config`] naming `what` and the offending input.
pub fn validate_name(what: &str, name: &str) -> Result<(), Error> {
    let invalid = |why: &str| {
        Err(Error::new(
            ErrorKind::Config,
            format!("invalid {what} {name:?}: {why}"),
        ))
    };
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name.len() > StreamId::MAX_LEN {
        return invalid("longer than 128 characters");
    }
    if name.starts_with('.') {
        return invalid("must not start with '.'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return invalid(&format!(
            "character {c:?} is not allowed (use ASCII letters, digits, '_', '-', '.')"
        ));
    }
    Ok(())
}

static DEFAULT_STREAM: LazyLock<StreamId> =
    LazyLock::new(|| StreamId(Arc::from(StreamId::DEFAULT)));

impl Default for StreamId {
    /// The stream `default`.
    fn default() -> Self {
        DEFAULT_STREAM.clone()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for StreamId {
    type Error = Error;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_file_and_subject_safe_names() {
        for ok in ["default", "users", "shard-01", "eu.west_1", "A"] {
            assert_eq!(StreamId::new(ok).unwrap().as_str(), ok);
        }
        assert_eq!(StreamId::default().as_str(), "default");
    }

    #[test]
    fn rejects_unsafe_names_with_the_reason() {
        let cases = [
            ("", "must not be empty"),
            (".hidden", "must not start with '.'"),
            ("a/b", "'/' is not allowed"),
            ("a b", "' ' is not allowed"),
            ("é", "'é' is not allowed"),
        ];
        for (bad, why) in cases {
            let err = StreamId::new(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains(why), "{err}");
        }
        assert!(StreamId::new(&"x".repeat(129)).is_err());
        assert!(StreamId::new(&"x".repeat(128)).is_ok());
    }
}
