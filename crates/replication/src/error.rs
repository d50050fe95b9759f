//! Errors whose kind decides what the framework does next.
//!
//! Every failure a sink, codec or replicator reports carries an [`ErrorKind`].
//! The kind, never the message, decides whether delivery retries: see
//! [`ErrorKind::is_retryable`]. Messages are lowercase without a trailing
//! period so that they compose into log lines.

use std::fmt;
use std::time::Duration;

/// A boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, in terms of what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backend cannot be reached or is not ready. Retried with backoff.
    Unavailable,
    /// The operation did not finish in time. Retried with backoff.
    Timeout,
    /// The backend asked us to slow down. Retried, after
    /// [`Error::retry_after`] when given.
    Throttled,
    /// The backend refused this data and will refuse it again (a poison
    /// event). Not retried: the event goes to the dead-letter log.
    Rejected,
    /// The data cannot be read or written in the requested schema version
    /// (an unknown event type, a future schema version, no form in the
    /// writer's version). Not retried: quarantined or skipped and counted.
    Unsupported,
    /// The component is misconfigured. Not retried.
    Config,
    /// The component was closed or shut down. Not retried.
    Closed,
    /// Stored data failed an integrity check. Not retried.
    Corrupt,
    /// A bug or broken invariant. Not retried.
    Internal,
}

impl ErrorKind {
    /// Whether an operation that failed with this kind may succeed if it is
    /// tried again unchanged.
    pub const fn is_retryable(self) -> bool {
        matches!(self, Self::Unavailable | Self::Timeout | Self::Throttled)
    }

    /// A stable lowercase label for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Throttled => "throttled",
            Self::Rejected => "rejected",
            Self::Unsupported => "unsupported",
            Self::Config => "config",
            Self::Closed => "closed",
            Self::Corrupt => "corrupt",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The framework's error: a kind, a message, an optional source and an
/// optional retry hint.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
    retry_after: Option<Duration>,
}

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            retry_after: None,
        }
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The same error, its message after `prefix` (what it is about).
    #[must_use]
    pub(crate) fn about(mut self, prefix: impl std::fmt::Display) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    /// Attaches a hint of when a retry may succeed.
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// When a retry may succeed, if the failing side said so.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Shorthand for `self.kind().is_retryable()`.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(source) = &self.source {
            // Not twice, when the message already says it.
            let source = source.to_string();
            if !self.message.contains(&source) {
                write!(f, ": {source}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A sink's failure to apply a batch, with how far it got.
#[derive(Debug)]
pub struct SinkError {
    error: Error,
    applied_through: Option<u64>,
}

impl SinkError {
    /// A failure before any record of the batch was applied.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error::new(kind, message).into()
    }

    /// Records that every record up to and including `sequence` was applied
    /// durably before the failure, so delivery resumes after it. `None`
    /// (nothing of the batch was applied) leaves the error as it is.
    #[must_use]
    pub fn applied_through(mut self, sequence: impl Into<Option<u64>>) -> Self {
        if let Some(sequence) = sequence.into() {
            self.applied_through = Some(sequence);
        }
        self
    }

    /// The last sequence applied before the failure, if any was.
    pub fn applied_through_sequence(&self) -> Option<u64> {
        self.applied_through
    }

    /// The underlying error.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// Shorthand for `self.error().kind()`.
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }

    /// Unwraps the underlying error.
    pub fn into_error(self) -> Error {
        self.error
    }
}

impl From<Error> for SinkError {
    fn from(error: Error) -> Self {
        Self {
            error,
            applied_through: None,
        }
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)?;
        if let Some(seq) = self.applied_through {
            write!(f, " (applied through sequence {seq})")?;
        }
        Ok(())
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// A publish that did not take place, handing the event back when it was
/// not consumed so that the caller can retry or divert it.
pub struct PublishError<E> {
    error: Error,
    event: Option<E>,
}

impl<E> PublishError<E> {
    /// A refused publish; `event` is handed back if nothing consumed it.
    pub fn new(error: Error, event: Option<E>) -> Self {
        Self { error, event }
    }

    /// The reason.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// Shorthand for `self.error().kind()`.
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }

    /// Takes back the event if the publish did not consume it.
    pub fn into_event(self) -> Option<E> {
        self.event
    }

    /// Drops the event, keeping the reason.
    pub fn into_error(self) -> Error {
        self.error
    }
}

impl<E> fmt::Debug for PublishError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishError")
            .field("error", &self.error)
            .field("event_returned", &self.event.is_some())
            .finish()
    }
}

impl<E> fmt::Display for PublishError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "publish failed: {}", self.error)
    }
}

impl<E> std::error::Error for PublishError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn progress_is_kept_only_when_there_is_some() {
        let err = SinkError::new(ErrorKind::Unavailable, "x");
        assert_eq!(err.applied_through(None).applied_through_sequence(), None);
        let err = SinkError::new(ErrorKind::Unavailable, "x").applied_through(Some(7));
        assert_eq!(err.applied_through_sequence(), Some(7));
        assert_eq!(
            err.applied_through(None).applied_through_sequence(),
            Some(7)
        );
    }

    use super::*;

    #[test]
    fn a_source_is_shown_unless_the_message_already_says_it() {
        let io = || std::io::Error::other("No space left on device (os error 28)");
        let err = Error::new(ErrorKind::Unavailable, "cannot write x").with_source(io());
        assert_eq!(
            err.to_string(),
            "unavailable: cannot write x: No space left on device (os error 28)"
        );
        let err = Error::new(
            ErrorKind::Unavailable,
            "cannot write x: No space left on device (os error 28)",
        )
        .with_source(io());
        assert_eq!(
            err.to_string(),
            "unavailable: cannot write x: No space left on device (os error 28)"
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "still its source"
        );
    }

    #[test]
    fn only_transient_kinds_retry() {
        let retried: Vec<_> = [
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::Throttled,
            ErrorKind::Rejected,
            ErrorKind::Unsupported,
            ErrorKind::Config,
            ErrorKind::Closed,
            ErrorKind::Corrupt,
            ErrorKind::Internal,
        ]
        .into_iter()
        .filter(|k| k.is_retryable())
        .collect();
        assert_eq!(
            retried,
            [
                ErrorKind::Unavailable,
                ErrorKind::Timeout,
                ErrorKind::Throttled
            ]
        );
    }

    #[test]
    fn display_chains_kind_message_source_and_progress() {
        let io = std::io::Error::other("disk full");
        let err =
            SinkError::from(Error::new(ErrorKind::Unavailable, "write failed").with_source(io))
                .applied_through(7);
        assert_eq!(
            err.to_string(),
            "unavailable: write failed: disk full (applied through sequence 7)"
        );
        assert_eq!(err.applied_through_sequence(), Some(7));
    }
}
