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

    fn assign(&mut self, assignment: &Assignment<'_>) {
        self.sequence = assignment.sequence;
        self.timestamp = assignment.timestamp;
        self.stream = Some(assignment.stream.clone());
    }

    fn set_shard(&mut self, shard: &StreamId) {
        self.shard = Some(shard.clone());
    }
}

/// Encodes a [`Note`] as `"<version>|<format>|<sequence>|<kind>|<ticks>|<peer>|<text>"`
/// and counts every encoding it performs. Decoding restores every field
/// but the stream and shard.
#[derive(Debug, Default)]
pub struct NoteCodec {
    encodings: AtomicUsize,
}

impl NoteCodec {
    /// How many times [`Codec::encode`] ran.
    pub fn encodings(&self) -> usize {
        self.encodings.load(Ordering::SeqCst)
    }

    /// The text part of an encoded note.
    pub fn text_of(bytes: &[u8]) -> String {
        let text = String::from_utf8_lossy(bytes);
        text.splitn(7, '|').nth(6).unwrap_or_default().to_owned()
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
            "{}|{}|{}|{}|{}|{}|{}",
            encoding.version.get(),
            encoding.format,
            note.sequence,
            note.kind,
            note.timestamp.ticks(),
            note.peer.as_deref().unwrap_or(""),
            note.text
        )))
    }

    fn decode(&self, _format: Format, bytes: &[u8]) -> Result<Note, CodecError> {
        let malformed = |why: &str| CodecError::new(CodecErrorKind::Malformed, why.to_owned());
        let text = std::str::from_utf8(bytes).map_err(|e| malformed(&e.to_string()))?;
        let parts: Vec<&str> = text.splitn(7, '|').collect();
        let [_, _, sequence, kind, ticks, peer, body] = parts[..] else {
            return Err(malformed("expected 7 fields"));
        };
        Ok(Note {
            sequence: sequence.parse().map_err(|_| malformed("bad sequence"))?,
            kind: kind.parse().map_err(|_| malformed("bad kind"))?,
            timestamp: ticks
                .parse()
                .ok()
                .and_then(Timestamp::from_ticks)
                .ok_or_else(|| malformed("bad timestamp"))?,
            peer: (!peer.is_empty()).then(|| peer.to_owned()),
            ..Note::new(body)
        })
    }
}
