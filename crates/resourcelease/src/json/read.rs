//! The lenient JSON reader.
//!
//! The document is read in one pass with serde. Every field value is kept
//! as it came (numbers, strings, nested objects) and converted only when
//! the object ends, so that shape errors carry the field's path and a
//! document of a future schema version is reported as such even when its
//! other fields would not parse.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use base64::Engine as _;
use omnirelay_replication::{Timestamp, WireVersion};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use uuid::Uuid;

use crate::error::DecodeError;
use crate::event::{
    Metadata, ResourceLeaseErrorInfo, ResourceLeaseItemPayload, ResourceLeaseOwnershipHandle,
    ResourceLeasePendingItem, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType,
};
use crate::version::{LATEST, V1};

/// Decodes a JSON document of any known schema version.
///
/// # Errors
///
/// [`DecodeError`]: [`DecodeError::is_unsupported`] for an unknown event
/// type or a future schema version, otherwise a malformed document. Never
/// panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<ResourceLeaseReplicationEvent, DecodeError> {
    decode_with_version(bytes).map(|(event, _)| event)
}

/// Decodes a JSON document and reports its schema version (1 when it has
/// no `schemaVersion`).
///
/// # Errors
///
/// As [`decode`].
pub fn decode_with_version(
    bytes: &[u8],
) -> Result<(ResourceLeaseReplicationEvent, WireVersion), DecodeError> {
    let top: Nested<'_, EventFields<'_>> =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))?;
    match top.0 {
        Ok(Some(decoded)) => Ok(decoded),
        Ok(None) => Err(DecodeError::Json(
            "expected a JSON object, found null".into(),
        )),
        Err(DecodeError::Field { path, reason }) if path.is_empty() => {
            Err(DecodeError::Json(reason))
        }
        Err(err) => Err(err),
    }
}

/// Implements the `visit_*` methods of the scalar JSON shapes a visitor
/// does not expect, answering each with `$reject(found)`.
macro_rules! reject_scalars {
    ($reject:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($reject("a boolean"))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($reject("a number"))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($reject("a number"))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($reject("a number"))
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($reject("a string"))
        }
    };
}

/// A JSON value as it came: scalars kept, objects and arrays skipped.
enum Scalar<'de> {
    Null,
    Bool(bool),
    Int(i128),
    /// A number with a fraction or an exponent, or an integer too large
    /// for 64 bits (`true`).
    Float {
        huge: bool,
    },
    Str(Cow<'de, str>),
    Object,
    Array,
}

impl Scalar<'_> {
    fn describe(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "a boolean",
            Self::Int(_) => "an integer",
            Self::Float { huge: true } => "a number out of range",
            Self::Float { huge: false } => "a non-integral number",
            Self::Str(_) => "a string",
            Self::Object => "an object",
            Self::Array => "an array",
        }
    }

    fn integer<T: TryFrom<i128>>(&self) -> Result<T, String> {
        let value = match self {
            Self::Int(v) => *v,
            Self::Str(s) => parse_integer(s).ok_or_else(|| format!("{s:?} is not an integer"))?,
            other => return Err(format!("expected an integer, found {}", other.describe())),
        };
        T::try_from(value).map_err(|_| format!("{value} is out of range"))
    }

    fn string(self) -> Result<Option<String>, String> {
        match self {
            Self::Str(s) => Ok(Some(s.into_owned())),
            Self::Null => Ok(None),
            other => Err(format!("expected a string, found {}", other.describe())),
        }
    }

    fn boolean(&self) -> Result<Option<bool>, String> {
        match self {
            Self::Bool(b) => Ok(Some(*b)),
            Self::Null => Ok(None),
            // System.Text.Json reads "true"/"false" strings only when told.
            Self::Str(s) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Self::Str(s) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            other => Err(format!("expected a boolean, found {}", other.describe())),
        }
    }

    fn timestamp(&self) -> Result<Timestamp, String> {
        match self {
            Self::Str(s) => Timestamp::parse(s).map_err(|e| e.to_string()),
            other => Err(format!(
                "expected a timestamp string, found {}",
                other.describe()
            )),
        }
    }
}

/// An integer in a string, as System.Text.Json's `AllowReadingFromString`
/// reads it: an optional sign and ASCII digits, nothing else.
fn parse_integer(text: &str) -> Option<i128> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || digits.len() > 30 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                // Integers past u64 come as floats.
                Ok(Scalar::Float {
                    huge: v.abs() >= 9.2e18,
                })
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Object)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A string that borrows from the input when it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// The fields of one JSON object, matched by name without regard to ASCII
/// case and converted when the object ends.
trait ObjectFields<'de>: Default {
    type Output;
    /// The known property names, in the order [`ObjectFields::read`]
    /// numbers them.
    const NAMES: &'static [&'static str];
    /// Reads the value of the field numbered `index`.
    fn read<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error>;
    /// Converts the collected values.
    fn finish(self) -> Result<Self::Output, DecodeError>;
}

fn field_index(names: &[&str], key: &str) -> Option<usize> {
    names
        .iter()
        .position(|n| *n == key)
        .or_else(|| names.iter().position(|n| n.eq_ignore_ascii_case(key)))
}

/// A JSON value read as an optional object: `null` is `None`; any other
/// non-object value is a field error with an empty path for the parent to
/// fill in.
struct Nested<'de, F: ObjectFields<'de>>(Result<Option<F::Output>, DecodeError>, PhantomData<F>);

fn shape_error<'de, F: ObjectFields<'de>>(found: &str) -> Nested<'de, F> {
    Nested(
        Err(DecodeError::field(
            "",
            format!("expected an object, found {found}"),
        )),
        PhantomData,
    )
}

impl<'de, F: ObjectFields<'de>> Deserialize<'de> for Nested<'de, F> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<F>(PhantomData<F>);
        impl<'de, F: ObjectFields<'de>> Visitor<'de> for V<F> {
            type Value = Nested<'de, F>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object or null")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = F::default();
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    match field_index(F::NAMES, &key) {
                        Some(index) => fields.read(index, &mut map)?,
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Nested(fields.finish().map(Some), PhantomData))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Nested(Ok(None), PhantomData))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Nested(Ok(None), PhantomData))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(shape_error("an array"))
            }
            reject_scalars!(shape_error);
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

impl<'de, F: ObjectFields<'de>> Nested<'de, F> {
    /// The object, with errors placed under `path`.
    fn under(self, path: &str) -> Result<Option<F::Output>, DecodeError> {
        self.0.map_err(|e| e.within(path))
    }
}

/// Reads a field value of type `T` into `slot` (last occurrence wins).
fn take<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    slot: &mut Option<T>,
) -> Result<(), A::Error> {
    *slot = Some(map.next_value()?);
    Ok(())
}

fn required<T>(value: Option<T>, path: &str) -> Result<T, DecodeError> {
    value.ok_or_else(|| DecodeError::field(path, "is required"))
}

fn convert<T>(path: &str, result: Result<T, String>) -> Result<T, DecodeError> {
    result.map_err(|reason| DecodeError::field(path, reason))
}

fn opt_string(path: &str, value: Option<Scalar<'_>>) -> Result<Option<String>, DecodeError> {
    value.map_or(Ok(None), |v| convert(path, v.string()))
}

/// A required string of the reference's positional records: absent or null
/// reads as empty, as the reference's constructor receives it.
fn plain_string(path: &str, value: Option<Scalar<'_>>) -> Result<String, DecodeError> {
    Ok(opt_string(path, value)?.unwrap_or_default())
}

fn integer_or_zero<T: TryFrom<i128> + Default>(
    path: &str,
    value: Option<Scalar<'_>>,
) -> Result<T, DecodeError> {
    value.map_or(Ok(T::default()), |v| convert(path, v.integer()))
}

/// A string map: values must be strings.
struct StringMap(Result<Option<Metadata>, DecodeError>);

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Metadata::new();
                let mut error = None;
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    match map.next_value::<Scalar<'de>>()? {
                        Scalar::Str(value) => out.insert(key.into_owned(), value.into_owned()),
                        other => {
                            error.get_or_insert_with(|| {
                                DecodeError::field(
                                    key.as_ref(),
                                    format!("expected a string value, found {}", other.describe()),
                                )
                            });
                        }
                    }
                }
                Ok(StringMap(error.map_or(Ok(Some(out)), Err)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(StringMap(Ok(None)))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(StringMap(Ok(None)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(map_shape_error("an array"))
            }
            reject_scalars!(map_shape_error);
        }
        deserializer.deserialize_any(V)
    }
}

fn map_shape_error(found: &str) -> StringMap {
    StringMap(Err(DecodeError::field(
        "",
        format!("expected an object of strings, found {found}"),
    )))
}

impl StringMap {
    fn under(self, path: &str) -> Result<Option<Metadata>, DecodeError> {
        self.0.map_err(|e| e.within(path))
    }
}

#[derive(Default)]
struct EventFields<'de> {
    schema_version: Option<Scalar<'de>>,
    sequence_number: Option<Scalar<'de>>,
    event_type: Option<Scalar<'de>>,
    timestamp: Option<Scalar<'de>>,
    stream_id: Option<Scalar<'de>>,
    node_id: Option<Scalar<'de>>,
    ownership: Option<Nested<'de, OwnershipFields<'de>>>,
    peer_id: Option<Scalar<'de>>,
    payload: Option<Nested<'de, PayloadFields<'de>>>,
    error: Option<Nested<'de, ErrorFields<'de>>>,
    metadata: Option<StringMap>,
    items: Option<Items<'de>>,
}

impl<'de> ObjectFields<'de> for EventFields<'de> {
    type Output = (ResourceLeaseReplicationEvent, WireVersion);
    const NAMES: &'static [&'static str] = &[
        "schemaVersion",
        "sequenceNumber",
        "eventType",
        "timestamp",
        "streamId",
        "nodeId",
        "ownership",
        "peerId",
        "payload",
        "error",
        "metadata",
        "items",
    ];

    fn read<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => take(map, &mut self.schema_version),
            1 => take(map, &mut self.sequence_number),
            2 => take(map, &mut self.event_type),
            3 => take(map, &mut self.timestamp),
            4 => take(map, &mut self.stream_id),
            5 => take(map, &mut self.node_id),
            6 => take(map, &mut self.ownership),
            7 => take(map, &mut self.peer_id),
            8 => take(map, &mut self.payload),
            9 => take(map, &mut self.error),
            10 => take(map, &mut self.metadata),
            _ => take(map, &mut self.items),
        }
    }

    fn finish(self) -> Result<Self::Output, DecodeError> {
        // The version first: a future document is reported as such even if
        // nothing else in it reads.
        let version = match self.schema_version {
            None | Some(Scalar::Null) => V1,
            Some(v) => {
                let n: i64 = convert("schemaVersion", v.integer())?;
                if n > i64::from(LATEST.get()) {
                    return Err(DecodeError::UnsupportedVersion(n));
                }
                u16::try_from(n)
                    .ok()
                    .and_then(WireVersion::new)
                    .ok_or_else(|| {
                        DecodeError::field("schemaVersion", format!("{n} is not a version"))
                    })?
            }
        };
        let event_type = event_type(required(self.event_type, "eventType")?)?;
        let metadata = match self.metadata {
            Some(map) => map.under("metadata")?.unwrap_or_default(),
            None => Metadata::new(),
        };
        let event = ResourceLeaseReplicationEvent {
            sequence_number: integer_or_zero("sequenceNumber", self.sequence_number)?,
            event_type,
            timestamp: self
                .timestamp
                .map_or(Ok(Timestamp::MIN), |t| convert("timestamp", t.timestamp()))?,
            ownership: self.ownership.map_or(Ok(None), |o| o.under("ownership"))?,
            peer_id: opt_string("peerId", self.peer_id)?,
            payload: self.payload.map_or(Ok(None), |p| p.under("payload"))?,
            error: self.error.map_or(Ok(None), |e| e.under("error"))?,
            metadata,
            stream_id: opt_string("streamId", self.stream_id)?,
            node_id: opt_string("nodeId", self.node_id)?,
            items: self.items.map_or(Ok(Vec::new()), |i| i.0)?,
        };
        Ok((event, version))
    }
}

/// The event type from its name (any case) or number.
fn event_type(value: Scalar<'_>) -> Result<ResourceLeaseReplicationEventType, DecodeError> {
    match value {
        Scalar::Int(code) => i64::try_from(code)
            .ok()
            .and_then(ResourceLeaseReplicationEventType::from_code)
            .ok_or_else(|| DecodeError::UnknownEventType(code.to_string())),
        Scalar::Str(name) => {
            let name = name.trim();
            let known = match parse_integer(name) {
                Some(code) => i64::try_from(code)
                    .ok()
                    .and_then(ResourceLeaseReplicationEventType::from_code),
                None => ResourceLeaseReplicationEventType::from_name(name),
            };
            known.ok_or_else(|| DecodeError::UnknownEventType(format!("{name:?}")))
        }
        other => Err(DecodeError::field(
            "eventType",
            format!("expected a name or number, found {}", other.describe()),
        )),
    }
}

#[derive(Default)]
struct OwnershipFields<'de> {
    sequence_id: Option<Scalar<'de>>,
    attempt: Option<Scalar<'de>>,
    lease_id: Option<Scalar<'de>>,
}

impl<'de> ObjectFields<'de> for OwnershipFields<'de> {
    type Output = ResourceLeaseOwnershipHandle;
    const NAMES: &'static [&'static str] = &["sequenceId", "attempt", "leaseId"];

    fn read<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => take(map, &mut self.sequence_id),
            1 => take(map, &mut self.attempt),
            _ => take(map, &mut self.lease_id),
        }
    }

    fn finish(self) -> Result<Self::Output, DecodeError> {
        Ok(ResourceLeaseOwnershipHandle {
            sequence_id: integer_or_zero("sequenceId", self.sequence_id)?,
            attempt: integer_or_zero("attempt", self.attempt)?,
            lease_id: match self.lease_id {
                None => Uuid::nil(),
                Some(v) => convert("leaseId", guid(&v))?,
            },
        })
    }
}

/// A GUID in the 36-character hyphenated form, the only one
/// System.Text.Json reads.
fn guid(value: &Scalar<'_>) -> Result<Uuid, String> {
    match value {
        Scalar::Str(s) if s.len() == 36 => {
            Uuid::try_parse(s).map_err(|_| format!("{s:?} is not a GUID"))
        }
        Scalar::Str(s) => Err(format!("{s:?} is not a hyphenated 36-character GUID")),
        other => Err(format!(
            "expected a GUID string, found {}",
            other.describe()
        )),
    }
}

#[derive(Default)]
struct PayloadFields<'de> {
    resource_type: Option<Scalar<'de>>,
    resource_id: Option<Scalar<'de>>,
    partition_key: Option<Scalar<'de>>,
    payload_encoding: Option<Scalar<'de>>,
    body: Option<Scalar<'de>>,
    attributes: Option<StringMap>,
    request_id: Option<Scalar<'de>>,
}

impl<'de> ObjectFields<'de> for PayloadFields<'de> {
    type Output = ResourceLeaseItemPayload;
    const NAMES: &'static [&'static str] = &[
        "resourceType",
        "resourceId",
        "partitionKey",
        "payloadEncoding",
        "body",
        "attributes",
        "requestId",
    ];

    fn read<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => take(map, &mut self.resource_type),
            1 => take(map, &mut self.resource_id),
            2 => take(map, &mut self.partition_key),
            3 => take(map, &mut self.payload_encoding),
            4 => take(map, &mut self.body),
            5 => take(map, &mut self.attributes),
            _ => take(map, &mut self.request_id),
        }
    }

    fn finish(self) -> Result<Self::Output, DecodeError> {
        Ok(ResourceLeaseItemPayload {
            resource_type: plain_string("resourceType", self.resource_type)?,
            resource_id: plain_string("resourceId", self.resource_id)?,
            partition_key: plain_string("partitionKey", self.partition_key)?,
            payload_encoding: plain_string("payloadEncoding", self.payload_encoding)?,
            body: match self.body {
                None | Some(Scalar::Null) => Vec::new(),
                Some(Scalar::Str(text)) => base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| DecodeError::field("body", format!("invalid base64: {e}")))?,
                Some(other) => {
                    return Err(DecodeError::field(
                        "body",
                        format!("expected a base64 string, found {}", other.describe()),
                    ));
                }
            },
            attributes: self
                .attributes
                .map_or(Ok(None), |a| a.under("attributes"))?,
            request_id: opt_string("requestId", self.request_id)?,
        })
    }
}

#[derive(Default)]
struct ErrorFields<'de> {
    message: Option<Scalar<'de>>,
    code: Option<Scalar<'de>>,
}

impl<'de> ObjectFields<'de> for ErrorFields<'de> {
    type Output = ResourceLeaseErrorInfo;
    const NAMES: &'static [&'static str] = &["message", "code"];

    fn read<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => take(map, &mut self.message),
            _ => take(map, &mut self.code),
        }
    }

    fn finish(self) -> Result<Self::Output, DecodeError> {
        Ok(ResourceLeaseErrorInfo {
            message: plain_string("message", self.message)?,
            code: opt_string("code", self.code)?,
        })
    }
}

#[derive(Default)]
struct PendingItemFields<'de> {
    payload: Option<Nested<'de, PayloadFields<'de>>>,
    attempt: Option<Scalar<'de>>,
    enqueued_at: Option<Scalar<'de>>,
    last_error: Option<Nested<'de, ErrorFields<'de>>>,
    sequence_id: Option<Scalar<'de>>,
    last_ownership_token: Option<Nested<'de, OwnershipFields<'de>>>,
}

impl<'de> ObjectFields<'de> for PendingItemFields<'de> {
    type Output = ResourceLeasePendingItem;
    const NAMES: &'static [&'static str] = &[
        "payload",
        "attempt",
        "enqueuedAt",
        "lastError",
        "sequenceId",
        "lastOwnershipToken",
    ];

    fn read<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => take(map, &mut self.payload),
            1 => take(map, &mut self.attempt),
            2 => take(map, &mut self.enqueued_at),
            3 => take(map, &mut self.last_error),
            4 => take(map, &mut self.sequence_id),
            _ => take(map, &mut self.last_ownership_token),
        }
    }

    fn finish(self) -> Result<Self::Output, DecodeError> {
        let payload = self.payload.map_or(Ok(None), |p| p.under("payload"))?;
        Ok(ResourceLeasePendingItem {
            payload: required(payload, "payload")?,
            attempt: integer_or_zero("attempt", self.attempt)?,
            enqueued_at: self
                .enqueued_at
                .map_or(Ok(Timestamp::MIN), |t| convert("enqueuedAt", t.timestamp()))?,
            last_error: self.last_error.map_or(Ok(None), |e| e.under("lastError"))?,
            sequence_id: integer_or_zero("sequenceId", self.sequence_id)?,
            last_ownership_token: self
                .last_ownership_token
                .map_or(Ok(None), |t| t.under("lastOwnershipToken"))?,
        })
    }
}

/// The `items` array of a snapshot event; `null` reads as empty.
struct Items<'de>(
    Result<Vec<ResourceLeasePendingItem>, DecodeError>,
    PhantomData<&'de ()>,
);

impl<'de> Deserialize<'de> for Items<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Items<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of pending items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                let mut error = None;
                let mut index = 0;
                while let Some(item) = seq.next_element::<Nested<'de, PendingItemFields<'de>>>()? {
                    let path = format!("items[{index}]");
                    match item.under(&path) {
                        Ok(Some(item)) => items.push(item),
                        Ok(None) => {
                            error.get_or_insert_with(|| {
                                DecodeError::field(path, "must not be null")
                            });
                        }
                        Err(err) => {
                            error.get_or_insert(err);
                        }
                    }
                    index += 1;
                }
                Ok(Items(error.map_or(Ok(items), Err), PhantomData))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Items(Ok(Vec::new()), PhantomData))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Items(Ok(Vec::new()), PhantomData))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(items_shape_error("an object"))
            }
            reject_scalars!(items_shape_error);
        }
        deserializer.deserialize_any(V)
    }
}

fn items_shape_error<'de>(found: &str) -> Items<'de> {
    Items(
        Err(DecodeError::field(
            "items",
            format!("expected an array of pending items, found {found}"),
        )),
        PhantomData,
    )
}

/// The body of a request to the reference dispatcher's RPC procedures
/// (reference §3.2), read leniently as event documents are: property names
/// in any case, unknown properties ignored. One shape holds every
/// procedure's fields; each procedure takes what it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RpcRequest {
    /// `enqueue`: the item.
    pub payload: Option<ResourceLeaseItemPayload>,
    /// `lease`: the explicit peer id.
    pub peer_id: Option<String>,
    /// `complete`, `heartbeat`, `fail`: the lease's token.
    pub ownership_token: Option<ResourceLeaseOwnershipHandle>,
    /// `fail`: the failure's message.
    pub reason: Option<String>,
    /// `fail`: the failure's code.
    pub error_code: Option<String>,
    /// `fail`: whether to requeue (`None`: not given; the reference
    /// defaults it to true).
    pub requeue: Option<bool>,
    /// `fail`: metadata of the failure.
    pub metadata: Option<Metadata>,
    /// `restore`: the items (`None`: not given or `null`).
    pub items: Option<Vec<ResourceLeasePendingItem>>,
}

/// Reads an RPC request body; an empty body reads as `{}`.
///
/// # Errors
///
/// [`DecodeError::Json`] for malformed JSON or a body that is not an
/// object; [`DecodeError::Field`] naming the field that is wrong.
pub fn decode_rpc_request(bytes: &[u8]) -> Result<RpcRequest, DecodeError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(RpcRequest::default());
    }
    let top: Nested<'_, RpcRequestFields<'_>> =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))?;
    match top.0 {
        Ok(Some(request)) => Ok(request),
        Ok(None) => Ok(RpcRequest::default()),
        Err(DecodeError::Field { path, reason }) if path.is_empty() => {
            Err(DecodeError::Json(reason))
        }
        Err(err) => Err(err),
    }
}

#[derive(Default)]
struct RpcRequestFields<'de> {
    payload: Option<Nested<'de, PayloadFields<'de>>>,
    peer_id: Option<Scalar<'de>>,
    ownership_token: Option<Nested<'de, OwnershipFields<'de>>>,
    reason: Option<Scalar<'de>>,
    error_code: Option<Scalar<'de>>,
    requeue: Option<Scalar<'de>>,
    metadata: Option<StringMap>,
    items: Option<Items<'de>>,
}

impl<'de> ObjectFields<'de> for RpcRequestFields<'de> {
    type Output = RpcRequest;
    const NAMES: &'static [&'static str] = &[
        "payload",
        "peerId",
        "ownershipToken",
        "reason",
        "errorCode",
        "requeue",
        "metadata",
        "items",
    ];

    fn read<A: MapAccess<'de>>(&mut self, index: usize, map: &mut A) -> Result<(), A::Error> {
        match index {
            0 => take(map, &mut self.payload),
            1 => take(map, &mut self.peer_id),
            2 => take(map, &mut self.ownership_token),
            3 => take(map, &mut self.reason),
            4 => take(map, &mut self.error_code),
            5 => take(map, &mut self.requeue),
            6 => take(map, &mut self.metadata),
            _ => take(map, &mut self.items),
        }
    }

    fn finish(self) -> Result<Self::Output, DecodeError> {
        let items = match self.items {
            None => None,
            Some(items) => Some(items.0?),
        };
        Ok(RpcRequest {
            payload: self.payload.map_or(Ok(None), |p| p.under("payload"))?,
            peer_id: opt_string("peerId", self.peer_id)?,
            ownership_token: self
                .ownership_token
                .map_or(Ok(None), |t| t.under("ownershipToken"))?,
            reason: opt_string("reason", self.reason)?,
            error_code: opt_string("errorCode", self.error_code)?,
            requeue: self
                .requeue
                .map_or(Ok(None), |r| convert("requeue", r.boolean()))?,
            metadata: match self.metadata {
                Some(map) => map.under("metadata")?,
                None => None,
            },
            items,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_in_strings_follow_the_reference() {
        assert_eq!(parse_integer("42"), Some(42));
        assert_eq!(parse_integer("-7"), Some(-7));
        assert_eq!(parse_integer("+7"), Some(7));
        for bad in ["", "-", "x", "4 2", " 42", "42 ", "1e3", "0x10", "4.0"] {
            assert_eq!(parse_integer(bad), None, "{bad:?}");
        }
    }
}
