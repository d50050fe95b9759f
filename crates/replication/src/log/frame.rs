//! Record framing, free of I/O.
//!
//! A segment file is a [`SegmentHeader`] followed by frames:
//!
//! ```text
//! frame  = body_len: u32 LE | crc32c(body): u32 LE | body
//! body   = sequence: u64 LE | timestamp ticks: i64 LE | payload
//! ```
//!
//! The payload is the event in the segment's encoding. A frame is valid
//! when its length is in range, the whole body is present, and the CRC32C
//! of the body matches.

use crate::event::{Encoding, Format, WireVersion};
use crate::time::Timestamp;

/// Bytes of a frame before its body.
pub const FRAME_HEADER_LEN: usize = 8;
/// Bytes of a body before its payload.
pub const BODY_HEADER_LEN: usize = 16;
/// The largest body accepted; anything longer is corruption.
pub const MAX_BODY_LEN: usize = 64 * 1024 * 1024;
/// The largest payload (encoded event) a frame holds: the log refuses a
/// longer one at append, since no reader would take its frame back.
pub const MAX_PAYLOAD_LEN: usize = MAX_BODY_LEN - BODY_HEADER_LEN;
/// Bytes of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;

const MAGIC: &[u8; 8] = b"ORLSEG\x00\x01";

/// One stored record: its sequence, timestamp and encoded payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// The record's sequence.
    pub sequence: u64,
    /// The record's timestamp.
    pub timestamp: Timestamp,
    /// The encoded event.
    pub payload: &'a [u8],
}

/// Appends the frame of one record to `out`.
pub fn encode_frame(sequence: u64, timestamp: Timestamp, payload: &[u8], out: &mut Vec<u8>) {
    let body_len = BODY_HEADER_LEN + payload.len();
    let start = out.len();
    out.reserve(FRAME_HEADER_LEN + body_len);
    out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&timestamp.ticks().to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The size of the frame of a payload of `payload_len` bytes.
pub const fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + BODY_HEADER_LEN + payload_len
}

/// What is at the start of a byte slice.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid frame of `len` bytes.
    Frame(FrameRef<'a>, usize),
    /// The slice ends before the frame does: a torn write, or a write still
    /// in progress.
    Incomplete,
    /// The bytes are not a valid frame.
    Corrupt(&'static str),
}

/// Decodes the frame at the start of `bytes`.
pub fn decode_frame(bytes: &[u8]) -> Decoded<'_> {
    let Some(header) = bytes.get(..FRAME_HEADER_LEN) else {
        return Decoded::Incomplete;
    };
    let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(BODY_HEADER_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Decoded::Corrupt("frame length out of range");
    }
    let Some(body) = bytes.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + body_len) else {
        return Decoded::Incomplete;
    };
    if crc32c::crc32c(body) != crc {
        return Decoded::Corrupt("checksum mismatch");
    }
    let sequence = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
    let ticks = i64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
    let Some(timestamp) = Timestamp::from_ticks(ticks) else {
        return Decoded::Corrupt("timestamp out of range");
    };
    Decoded::Frame(
        FrameRef {
            sequence,
            timestamp,
            payload: &body[BODY_HEADER_LEN..],
        },
        FRAME_HEADER_LEN + body_len,
    )
}

/// The fixed header at the start of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The sequence of the segment's first record.
    pub first_sequence: u64,
    /// The encoding of every payload in the segment.
    pub encoding: Encoding,
    /// When the segment was created.
    pub created: Timestamp,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..16].copy_from_slice(&self.first_sequence.to_le_bytes());
        out[16] = format_code(self.encoding.format);
        out[18..20].copy_from_slice(&self.encoding.version.get().to_le_bytes());
        out[20..28].copy_from_slice(&self.created.ticks().to_le_bytes());
        let crc = crc32c::crc32c(&out[..28]);
        out[28..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a header.
    ///
    /// # Errors
    ///
    /// What is wrong with it; `"incomplete"` when `bytes` is too short.
    pub fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        let Some(bytes) = bytes.get(..SEGMENT_HEADER_LEN) else {
            return Err("incomplete segment header");
        };
        if &bytes[..8] != MAGIC {
            return Err("not a segment file (bad magic)");
        }
        let crc = u32::from_le_bytes(bytes[28..32].try_into().unwrap_or_default());
        if crc32c::crc32c(&bytes[..28]) != crc {
            return Err("segment header checksum mismatch");
        }
        let format = match bytes[16] {
            1 => Format::Json,
            2 => Format::Protobuf,
            _ => return Err("unknown payload format"),
        };
        let version = WireVersion::new(u16::from_le_bytes([bytes[18], bytes[19]]))
            .ok_or("schema version 0")?;
        let created = Timestamp::from_ticks(i64::from_le_bytes(
            bytes[20..28].try_into().unwrap_or_default(),
        ))
        .ok_or("creation time out of range")?;
        Ok(Self {
            first_sequence: u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()),
            encoding: Encoding::new(format, version),
            created,
        })
    }
}

fn format_code(format: Format) -> u8 {
    match format {
        Format::Json => 1,
        Format::Protobuf => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_frame_round_trips_and_is_checked() {
        let at = Timestamp::from_unix_millis(1_764_269_343_456).unwrap();
        let mut buf = Vec::new();
        encode_frame(7, at, b"hello", &mut buf);
        assert_eq!(buf.len(), frame_len(5));
        let want = FrameRef {
            sequence: 7,
            timestamp: at,
            payload: b"hello",
        };
        assert_eq!(decode_frame(&buf), Decoded::Frame(want, buf.len()));
        assert_eq!(decode_frame(&buf[..buf.len() - 1]), Decoded::Incomplete);
        assert_eq!(decode_frame(&buf[..3]), Decoded::Incomplete);
        let mut flipped = buf.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode_frame(&flipped),
            Decoded::Corrupt("checksum mismatch")
        );
        let mut huge = buf;
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_frame(&huge),
            Decoded::Corrupt("frame length out of range")
        );
    }

    #[test]
    fn segment_headers_round_trip_and_reject_damage() {
        let header = SegmentHeader {
            first_sequence: 4097,
            encoding: Encoding::new(Format::Protobuf, WireVersion::V2),
            created: Timestamp::UNIX_EPOCH,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        assert!(SegmentHeader::decode(&bytes[..31]).is_err());
        let mut bad = bytes;
        bad[9] ^= 1;
        assert_eq!(
            SegmentHeader::decode(&bad),
            Err("segment header checksum mismatch")
        );
        bad[0] = b'X';
        assert_eq!(
            SegmentHeader::decode(&bad),
            Err("not a segment file (bad magic)")
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&bytes);
            let _ = SegmentHeader::decode(&bytes);
        }

        #[test]
        fn any_single_corruption_is_detected(
            payload in prop::collection::vec(any::<u8>(), 0..64),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut buf = Vec::new();
            encode_frame(1, Timestamp::MIN, &payload, &mut buf);
            let i = at.index(buf.len());
            buf[i] ^= flip;
            prop_assert!(!matches!(decode_frame(&buf), Decoded::Frame(f, _) if f.payload == payload.as_slice() && f.sequence == 1));
        }
    }
}
