//! A minimal event type for framework tests.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use omnirelay_replication::{
    Assignment, Codec, CodecError, CodecErrorKind, Encoding, EventKind, Format, ReplicationEvent,
    StreamId, Timestamp, WireVersion,
};

/// A test event: a kind code, a peer, a text, and what replicators stamp.
///
/// Kind codes at or above [`Note::V2_ONLY_KIND`] have no version-1 form.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Note {
    /// The event type number.
    pub kind: i32,
    /// The peer, if any.
    pub peer: Option<String>,
    /// Free text.
    pub text: String,
    /// Stamped sequence.
    pub sequence: u64,
    /// Stamped timestamp.
    pub timestamp: Timestamp,
    /// Stamped stream.
    pub stream: Option<StreamId>,
    /// Stamped shard.
    pub shard: Option<StreamId>,
}

impl Note {
    /// The first kind with no version-1 form.
    pub const V2_ONLY_KIND: i32 = 100;

    /// A note of kind 1 with `text`.
    pub fn new(text: &str) -> Self {
        Self {
            kind: 1,
            text: text.to_owned(),
            ..Self::default()
        }
    }

    /// The same note from `peer`.
    #[must_use]
    pub fn from_peer(mut self, peer: &str) -> Self {
        self.peer = Some(peer.to_owned());
        self
    }

    /// The same note carrying `sequence` (which replicators ignore).
    #[must_use]
    pub fn with_sequence(mut self, sequence: u64) -> Self {
        self.sequence = sequence;
        self
    }
}

impl ReplicationEvent for Note {
    fn kind(&self) -> EventKind {
        EventKind {
            code: self.kind,
            name: if self.kind >= Self::V2_ONLY_KIND {
                "V2Only"
            } else {
                "Note"
            },
        }
    }

    fn peer(&self) -> Option<&str> {
        self.peer.as_deref()
    }

    fn sequence(&self) -> u64 {
        self.sequence
    }

    fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    fn assign(&mut self, assignment: &Assignment) {
        self.sequence = assignment.sequence;
        self.timestamp = assignment.timestamp;
        self.stream = Some(assignment.stream.clone());
    }

    fn set_shard(&mut self, shard: &StreamId) {
        self.shard = Some(shard.clone());
    }
}

/// Encodes a [`Note`] as `"<version>|<format>|<sequence>|<text>"` and counts
/// every encoding it performs.
#[derive(Debug, Default)]
pub struct NoteCodec {
    encodings: AtomicUsize,
}

impl NoteCodec {
    /// How many times [`Codec::encode`] ran.
    pub fn encodings(&self) -> usize {
        self.encodings.load(Ordering::SeqCst)
    }
}

impl Codec<Note> for NoteCodec {
    fn latest_version(&self) -> WireVersion {
        WireVersion::V2
    }

    fn encode(&self, note: &Note, encoding: Encoding) -> Result<Bytes, CodecError> {
        self.encodings.fetch_add(1, Ordering::SeqCst);
        if encoding.version == WireVersion::V1 && note.kind >= Note::V2_ONLY_KIND {
            return Err(CodecError::new(
                CodecErrorKind::Unrepresentable,
                format!("kind {} has no v1 form", note.kind),
            ));
        }
        Ok(Bytes::from(format!(
            "{}|{}|{}|{}",
            encoding.version.get(),
            encoding.format,
            note.sequence,
            note.text
        )))
    }

    fn decode(&self, _format: Format, bytes: &[u8]) -> Result<Note, CodecError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| CodecError::new(CodecErrorKind::Malformed, e.to_string()))?;
        let mut parts = text.splitn(4, '|');
        let (Some(_), Some(_), Some(seq), Some(body)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CodecError::new(
                CodecErrorKind::Malformed,
                "expected 4 fields",
            ));
        };
        let sequence = seq
            .parse()
            .map_err(|_| CodecError::new(CodecErrorKind::Malformed, "bad sequence"))?;
        Ok(Note {
            sequence,
            ..Note::new(body)
        })
    }
}
