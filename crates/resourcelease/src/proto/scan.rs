//! Reading an encoded event's header fields without decoding it, for a node
//! that appends events it received as the bytes they came in.
//!
//! The scan is conservative: it answers only for messages it can vouch
//! that [`super::decode`] accepts, with the values decoding would give, and
//! without allocating. Anything else it leaves to decoding (`None`): a
//! field it does not know, a message field given twice (protobuf merges
//! them), snapshot items, a map entry with anything but a key and a value.
//! A property test holds it to decoding, on valid and on corrupted bytes.

use std::ops::Range;

use omnirelay_replication::{Timestamp, WireVersion};

use crate::event::ResourceLeaseReplicationEventType;
use crate::version::LATEST;

const VARINT: u64 = 0;
const LEN: u64 = 2;

/// What [`scan`] read of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned {
    /// The event type.
    pub event_type: ResourceLeaseReplicationEventType,
    /// The event's timestamp.
    pub timestamp: Timestamp,
    /// Its schema version.
    pub version: WireVersion,
    /// Where its peer id lies in the bytes, if it has one.
    peer_id: Option<Range<usize>>,
    /// Where its timestamp's text lies, when that text is exactly the
    /// timestamp's round-trip form.
    round_trip: Option<Range<usize>>,
}

impl Scanned {
    /// The peer id, read from `bytes` (the bytes scanned).
    pub fn peer_id<'a>(&self, bytes: &'a [u8]) -> Option<&'a str> {
        let range = self.peer_id.clone()?;
        std::str::from_utf8(bytes.get(range)?).ok()
    }

    /// The timestamp's text as it is in `bytes` (the bytes scanned) when
    /// it is exactly [`Timestamp::round_trip_text`] of the timestamp, as
    /// senders of the reference format write it: a receiver can keep it
    /// instead of rendering it again.
    pub fn round_trip_timestamp<'a>(&self, bytes: &'a [u8]) -> Option<&'a str> {
        let range = self.round_trip.clone()?;
        std::str::from_utf8(bytes.get(range)?).ok()
    }
}

/// Whether `text`, which [`Timestamp::parse`] accepted, is what
/// [`Timestamp::round_trip_text`] renders of it: the round-trip shape
/// (`YYYY-MM-DDTHH:MM:SS.fffffff+00:00`, 33 bytes), every field of which
/// the parse checked to be in range, so nothing else renders differently.
fn is_round_trip(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 33
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && text.ends_with("+00:00")
}

/// A cursor over a message's bytes.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// One field: its number, and a varint's value or a length-delimited
/// field's byte range.
enum Field {
    Varint(u32, u64),
    Len(u32, Range<usize>),
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    /// A varint as prost reads it: at most ten bytes, the tenth at most 1.
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.bytes.get(self.at)?;
            self.at += 1;
            if i == 9 && byte > 1 {
                return None;
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }

    /// The next field; `Some(None)` at the end, `None` for anything the
    /// scan does not vouch for (a group, a fixed-width field, a bad key or
    /// length).
    fn next(&mut self) -> Option<Option<Field>> {
        if self.at == self.bytes.len() {
            return Some(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).ok().filter(|n| *n > 0)?;
        match key & 7 {
            VARINT => Some(Some(Field::Varint(number, self.varint()?))),
            LEN => {
                let len = usize::try_from(self.varint()?).ok()?;
                let end = self.at.checked_add(len)?;
                if end > self.bytes.len() {
                    return None;
                }
                let range = self.at..end;
                self.at = end;
                Some(Some(Field::Len(number, range)))
            }
            _ => None,
        }
    }
}

/// `Some(())` when `bytes[range]` is UTF-8 (most strings are short and
/// ASCII, which is checked a word at a time, without the general
/// validation's setup).
fn text(bytes: &[u8], range: Range<usize>) -> Option<()> {
    let bytes = &bytes[range];
    (bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()).then_some(())
}

/// The fields a nested message may have, by number and kind.
struct Shape {
    strings: &'static [u32],
    bytes: &'static [u32],
    varints: &'static [u32],
    /// `map<string, string>` fields.
    maps: &'static [u32],
}

const OWNERSHIP: Shape = Shape {
    strings: &[],
    bytes: &[3],
    varints: &[1, 2],
    maps: &[],
};
const PAYLOAD: Shape = Shape {
    strings: &[1, 2, 3, 4, 7],
    bytes: &[5],
    varints: &[],
    maps: &[6],
};
const ERROR: Shape = Shape {
    strings: &[1, 2],
    bytes: &[],
    varints: &[],
    maps: &[],
};
const MAP_ENTRY: Shape = ERROR;

/// Checks a nested message of `shape`; returns the length of the last
/// occurrence of field `measure`, if it has one.
fn message(bytes: &[u8], shape: &Shape, measure: Option<u32>) -> Option<Option<usize>> {
    let mut fields = Fields::new(bytes);
    let mut measured = None;
    while let Some(field) = fields.next()? {
        match field {
            Field::Varint(n, _) if shape.varints.contains(&n) => {}
            Field::Len(n, range) if shape.strings.contains(&n) => {
                text(bytes, range)?;
            }
            Field::Len(n, range) if shape.bytes.contains(&n) => {
                if measure == Some(n) {
                    measured = Some(range.len());
                }
            }
            Field::Len(n, range) if shape.maps.contains(&n) => {
                message(&bytes[range], &MAP_ENTRY, None)?;
            }
            _ => return None,
        }
    }
    Some(measured)
}

/// Scans a protobuf event; see the module docs.
pub fn scan(bytes: &[u8]) -> Option<Scanned> {
    let mut fields = Fields::new(bytes);
    let (mut event_type, mut schema_version) = (0u64, 0u64);
    let (mut timestamp, mut peer_id) = (None, None);
    let (mut ownership, mut payload, mut error) = (false, false, false);
    while let Some(field) = fields.next()? {
        match field {
            Field::Varint(1, _) => {}
            Field::Varint(2, value) => event_type = value,
            Field::Varint(9, value) => schema_version = value,
            Field::Len(3, range) => {
                timestamp = Some((std::str::from_utf8(&bytes[range.clone()]).ok()?, range));
            }
            Field::Len(4, range) => {
                text(bytes, range.clone())?;
                peer_id = Some(range);
            }
            Field::Len(10 | 11, range) => {
                text(bytes, range)?;
            }
            Field::Len(5, range) if !ownership => {
                ownership = true;
                // A lease id of anything but 16 bytes does not decode.
                let lease_id = message(&bytes[range], &OWNERSHIP, Some(3))?;
                if lease_id != Some(16) {
                    return None;
                }
            }
            Field::Len(6, range) if !payload => {
                payload = true;
                message(&bytes[range], &PAYLOAD, None)?;
            }
            Field::Len(7, range) if !error => {
                error = true;
                message(&bytes[range], &ERROR, None)?;
            }
            Field::Len(8, range) => {
                message(&bytes[range], &MAP_ENTRY, None)?;
            }
            _ => return None,
        }
    }
    // As prost reads an int32: the low 32 bits.
    let event_type = ResourceLeaseReplicationEventType::from_code((event_type as i32).into())?;
    let version = match schema_version as i32 {
        0 => WireVersion::V1,
        n if n > 0 && n <= i32::from(LATEST.get()) => WireVersion::new(u16::try_from(n).ok()?)?,
        _ => return None,
    };
    let (timestamp, round_trip) = match timestamp {
        None | Some(("", _)) => (Timestamp::MIN, None),
        Some((text, range)) => (
            Timestamp::parse(text).ok()?,
            is_round_trip(text).then_some(range),
        ),
    };
    let peer_id = peer_id.filter(|range| !range.is_empty());
    Some(Scanned {
        event_type,
        timestamp,
        version,
        peer_id,
        round_trip,
    })
}

/// The values of metadata `keys` in a protobuf event, each as
/// `decode(bytes)?.metadata.get(key)` gives it, without decoding; `None`
/// for bytes [`scan`] does not vouch for (decoding then decides).
///
/// Decoding keeps, of keys that differ only in ASCII case, the greatest in
/// ordinal order, and of a key given twice, the last value: so does this.
pub fn metadata<'a, const N: usize>(
    bytes: &'a [u8],
    keys: [&str; N],
) -> Option<[Option<&'a str>; N]> {
    scan(bytes)?;
    let mut found: [Option<(&[u8], &str)>; N] = [None; N];
    let mut fields = Fields::new(bytes);
    while let Some(field) = fields.next()? {
        let Field::Len(8, range) = field else {
            continue;
        };
        let entry = &bytes[range];
        let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
        let mut entry_fields = Fields::new(entry);
        while let Some(field) = entry_fields.next()? {
            match field {
                Field::Len(1, range) => key = &entry[range],
                Field::Len(2, range) => value = &entry[range],
                _ => return None,
            }
        }
        for (wanted, slot) in keys.iter().zip(found.iter_mut()) {
            if key.eq_ignore_ascii_case(wanted.as_bytes())
                && slot.is_none_or(|(best, _)| key >= best)
            {
                *slot = Some((key, std::str::from_utf8(value).ok()?));
            }
        }
    }
    Some(found.map(|slot| slot.map(|(_, value)| value)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Text of the round-trip shape that parses is what rendering gives.
        #[test]
        fn round_trip_shaped_text_that_parses_renders_the_same(
            text in r"[0-9]{4}-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-6][0-9]:[0-6][0-9]\.[0-9]{7}\+00:00",
        ) {
            prop_assert!(is_round_trip(&text));
            if let Ok(parsed) = Timestamp::parse(&text) {
                let rendered = parsed.round_trip_text();
                prop_assert_eq!(rendered.as_str(), text.as_str());
            }
        }

        /// Every rendered timestamp is recognised.
        #[test]
        fn rendered_timestamps_are_round_trip(ticks in 0..=Timestamp::MAX.ticks()) {
            let text = Timestamp::from_ticks(ticks).unwrap().round_trip_text();
            prop_assert!(is_round_trip(text.as_str()));
        }
    }

    #[test]
    fn other_forms_are_rendered_again() {
        for text in [
            "2026-11-28T05:25:01.6823902Z",
            "2026-11-28T05:25:01.682390+00:00",
            "2026-11-28T05:25:01.6823902-00:00",
            "2026-11-28T06:25:01.6823902+01:00",
            "2026-11-28T05:25:01.68239020+00:00",
            "2026-11-28",
        ] {
            assert!(!is_round_trip(text), "{text}");
        }
    }
}
