//! JetStream stream names, subject templates and message headers.

use omnirelay_replication::{Error, ErrorKind};

/// The JetStream stream the sink publishes to by default.
pub const DEFAULT_STREAM: &str = "OMNIRELAY_REPLICATION";

/// The default subject template: one subject per replication stream.
pub const DEFAULT_SUBJECT: &str = "omnirelay.replication.{stream}";

/// The placeholder for the replication stream id in a subject template.
pub(crate) const STREAM_PLACEHOLDER: &str = "{stream}";

/// Headers the sink sets on every message.
pub mod header {
    /// JetStream's deduplication id: `<stream>:<sequence>`.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// The replication stream.
    pub const STREAM: &str = "Omnirelay-Stream";
    /// The record's sequence in its replication stream.
    pub const SEQUENCE: &str = "Omnirelay-Sequence";
    /// The schema version of the payload.
    pub const SCHEMA_VERSION: &str = "Omnirelay-Schema-Version";
    /// The payload's format: `json` or `protobuf`.
    pub const FORMAT: &str = "Omnirelay-Format";
    /// The event type's name.
    pub const EVENT_TYPE: &str = "Omnirelay-Event-Type";
    /// The sequence of the record the sink published before this one on
    /// the same subject (0: none): readers put messages the bus holds out
    /// of order back in order, and tell a missing record from one the
    /// sink never sent (a type the sink's schema version lacks, a record
    /// it dead-lettered).
    pub const PREVIOUS_SEQUENCE: &str = "Omnirelay-Previous-Sequence";
    /// The sink that published the message: a random id per sink and
    /// process. A sink that finds a newer message than it published on
    /// its subject, from another writer, knows another node publishes
    /// the same stream there.
    pub const WRITER: &str = "Omnirelay-Writer";
}

/// Checks a JetStream stream name: 1 to 255 printable ASCII characters
/// other than space, `.`, `*`, `>`, `/` and `\`.
///
/// # Errors
///
/// [`ErrorKind::Config`] naming the problem.
pub fn validate_stream_name(name: &str) -> Result<(), Error> {
    let invalid = |why: &str| {
        Err(Error::new(
            ErrorKind::Config,
            format!("invalid JetStream stream name {name:?}: {why}"),
        ))
    };
    if name.is_empty() || name.len() > 255 {
        return invalid("must be 1 to 255 characters");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return invalid(&format!("character {c:?} is not allowed"));
    }
    Ok(())
}

/// Checks a subject template: dot-separated tokens of printable ASCII
/// without wildcards, whose last token is exactly `{stream}` (so that one
/// JetStream subject filter, `<prefix>.>`, covers every replication
/// stream, whose ids may themselves contain dots).
///
/// # Errors
///
/// [`ErrorKind::Config`] naming the problem.
pub fn validate_subject_template(template: &str) -> Result<(), Error> {
    let invalid = |why: &str| {
        Err(Error::new(
            ErrorKind::Config,
            format!("invalid subject template {template:?}: {why}"),
        ))
    };
    let Some(prefix) = template.strip_suffix(&format!(".{STREAM_PLACEHOLDER}")) else {
        return invalid("its last token must be {stream}, e.g. \"omnirelay.replication.{stream}\"");
    };
    for token in prefix.split('.') {
        if token.is_empty() {
            return invalid("empty token");
        }
        if let Some(c) = token
            .chars()
            .find(|c| !c.is_ascii_graphic() || matches!(c, '*' | '>' | '{' | '}'))
        {
            return invalid(&format!("character {c:?} is not allowed"));
        }
    }
    Ok(())
}

/// The subject of a replication stream.
pub(crate) fn subject_for(template: &str, stream: &str) -> String {
    template.replace(STREAM_PLACEHOLDER, stream)
}

/// The JetStream subject filter covering every replication stream.
pub(crate) fn subject_filter(template: &str) -> String {
    template.replace(STREAM_PLACEHOLDER, ">")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_cover_every_stream_under_one_filter() {
        assert_eq!(
            subject_for(DEFAULT_SUBJECT, "users.eu"),
            "omnirelay.replication.users.eu"
        );
        assert_eq!(subject_filter(DEFAULT_SUBJECT), "omnirelay.replication.>");
        assert!(validate_subject_template(DEFAULT_SUBJECT).is_ok());
        for bad in [
            "omnirelay.{stream}.events",
            "{stream}",
            "a..b.{stream}",
            "a.*.{stream}",
            "a b.{stream}",
            "omnirelay.replication",
        ] {
            assert_eq!(
                validate_subject_template(bad).unwrap_err().kind(),
                ErrorKind::Config,
                "{bad}"
            );
        }
    }

    #[test]
    fn stream_names_follow_jetstream_rules() {
        assert!(validate_stream_name(DEFAULT_STREAM).is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b"] {
            assert!(validate_stream_name(bad).is_err(), "{bad}");
        }
    }
}
