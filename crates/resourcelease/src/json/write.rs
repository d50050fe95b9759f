//! The canonical JSON writer.

use base64::Engine as _;
use omnirelay_replication::{Timestamp, WireVersion};

use crate::error::EncodeError;
use crate::event::{
    Metadata, ResourceLeaseErrorInfo, ResourceLeaseItemPayload, ResourceLeaseOwnershipHandle,
    ResourceLeasePendingItem, ResourceLeaseReplicationEvent,
};
use crate::version::{V2, check_writable};

/// Encodes `event` as a JSON document of schema `version`.
///
/// # Errors
///
/// [`EncodeError`] if the event has no form in `version` or the version is
/// unknown.
pub fn encode(
    event: &ResourceLeaseReplicationEvent,
    version: WireVersion,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(512);
    encode_into(event, version, &mut out)?;
    Ok(out)
}

/// Appends the JSON document of `event` in schema `version` to `out`.
///
/// # Errors
///
/// As [`encode`]; nothing is appended on error.
pub fn encode_into(
    event: &ResourceLeaseReplicationEvent,
    version: WireVersion,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    check_writable(event, version)?;
    let v2 = version >= V2;
    let mut w = Writer { out };
    w.raw(b"{");
    if v2 {
        w.raw(b"\"schemaVersion\":");
        w.int(i64::from(version.get()));
        w.raw(b",");
    }
    w.raw(b"\"sequenceNumber\":");
    w.int(event.sequence_number);
    w.raw(b",\"eventType\":\"");
    w.raw(event.event_type.name().as_bytes());
    w.raw(b"\",\"timestamp\":");
    w.timestamp(event.timestamp);
    if v2 {
        w.opt_str(b",\"streamId\":", event.stream_id.as_deref());
        w.opt_str(b",\"nodeId\":", event.node_id.as_deref());
    }
    if let Some(ownership) = &event.ownership {
        w.raw(b",\"ownership\":");
        w.ownership(ownership);
    }
    w.opt_str(b",\"peerId\":", event.peer_id.as_deref());
    if let Some(payload) = &event.payload {
        w.raw(b",\"payload\":");
        w.payload(payload);
    }
    if let Some(error) = &event.error {
        w.raw(b",\"error\":");
        w.error(error);
    }
    w.raw(b",\"metadata\":");
    w.map(&event.metadata);
    if v2 && (event.event_type.is_snapshot() || !event.items.is_empty()) {
        w.raw(b",\"items\":[");
        for (i, item) in event.items.iter().enumerate() {
            if i > 0 {
                w.raw(b",");
            }
            w.pending_item(item);
        }
        w.raw(b"]");
    }
    w.raw(b"}");
    Ok(())
}

/// A response of the reference dispatcher's RPC procedures (reference
/// §3.2), written as the reference's System.Text.Json does.
#[derive(Clone, Copy, Debug)]
pub enum RpcResponse<'a> {
    /// `enqueue`: `{"stats":{"pendingCount":n,"activeLeaseCount":n}}`.
    Enqueued {
        /// Pending items.
        pending: usize,
        /// Active leases.
        active: usize,
    },
    /// `lease`: the item, its token and owner (`ownerPeerId` is `""` when
    /// no peer resolved).
    Leased {
        /// The item as leased (its attempt is this delivery's).
        item: &'a ResourceLeasePendingItem,
        /// The lease's token.
        token: &'a ResourceLeaseOwnershipHandle,
        /// The owner.
        owner: Option<&'a str>,
    },
    /// `complete`, `heartbeat`, `fail`: `{"success":true}`.
    Acknowledged,
    /// `drain`: `{"items":[…]}`.
    Drained(&'a [ResourceLeasePendingItem]),
    /// `restore`: `{"restoredCount":n}`.
    Restored(usize),
}

/// Writes an RPC response body.
pub fn encode_rpc_response(response: &RpcResponse<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut w = Writer { out: &mut out };
    match response {
        RpcResponse::Enqueued { pending, active } => {
            w.raw(b"{\"stats\":{\"pendingCount\":");
            w.int(*pending);
            w.raw(b",\"activeLeaseCount\":");
            w.int(*active);
            w.raw(b"}}");
        }
        RpcResponse::Leased { item, token, owner } => {
            w.raw(b"{\"payload\":");
            w.payload(&item.payload);
            w.raw(b",\"sequenceId\":");
            w.int(item.sequence_id);
            w.raw(b",\"attempt\":");
            w.int(item.attempt);
            w.raw(b",\"enqueuedAt\":");
            w.timestamp(item.enqueued_at);
            if let Some(error) = &item.last_error {
                w.raw(b",\"lastError\":");
                w.error(error);
            }
            w.raw(b",\"ownershipToken\":");
            w.ownership(token);
            w.raw(b",\"ownerPeerId\":");
            w.str(owner.unwrap_or(""));
            w.raw(b"}");
        }
        RpcResponse::Acknowledged => w.raw(b"{\"success\":true}"),
        RpcResponse::Drained(items) => {
            w.raw(b"{\"items\":[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    w.raw(b",");
                }
                w.pending_item(item);
            }
            w.raw(b"]}");
        }
        RpcResponse::Restored(count) => {
            w.raw(b"{\"restoredCount\":");
            w.int(*count);
            w.raw(b"}");
        }
    }
    out
}

/// Writes the body of an RPC error as the reference's HTTP inbound does:
/// `{"message","status","code"?}`, `status` in upper snake case
/// (`INVALID_ARGUMENT`).
pub fn encode_rpc_error(message: &str, status: &str, code: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut w = Writer { out: &mut out };
    w.raw(b"{\"message\":");
    w.str(message);
    w.raw(b",\"status\":");
    w.str(status);
    w.opt_str(b",\"code\":", code);
    w.raw(b"}");
    out
}

/// A dead-lettered item as a dispatcher lists it (`GET
/// /queue/dead-letters`; ours, the reference keeps none).
#[derive(Clone, Copy, Debug)]
pub struct DeadLetterView<'a> {
    /// The item as it was last delivered.
    pub item: &'a ResourceLeasePendingItem,
    /// Why it was dead-lettered.
    pub error: Option<&'a ResourceLeaseErrorInfo>,
    /// When.
    pub at: Timestamp,
}

/// Writes `{"deadLetters":[{"item":{…},"error":{…},"deadLetteredAt":"…"},…],"total":N}`,
/// items and errors in the reference's shapes (`error` absent when none
/// was recorded); `letters` may be a page of the `total` held.
pub fn encode_dead_letters(letters: &[DeadLetterView<'_>], total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 512 * letters.len());
    let mut w = Writer { out: &mut out };
    w.raw(b"{\"deadLetters\":[");
    for (i, letter) in letters.iter().enumerate() {
        if i > 0 {
            w.raw(b",");
        }
        w.raw(b"{\"item\":");
        w.pending_item(letter.item);
        if let Some(error) = letter.error {
            w.raw(b",\"error\":");
            w.error(error);
        }
        w.raw(b",\"deadLetteredAt\":");
        w.timestamp(letter.at);
        w.raw(b"}");
    }
    w.raw(b"],\"total\":");
    w.raw(itoa::Buffer::new().format(total).as_bytes());
    w.raw(b"}");
    out
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn int(&mut self, value: impl itoa::Integer) {
        self.raw(itoa::Buffer::new().format(value).as_bytes());
    }

    fn str(&mut self, value: &str) {
        self.out.push(b'"');
        escape_into(value, self.out);
        self.out.push(b'"');
    }

    fn base64(&mut self, bytes: &[u8]) {
        let start = self.out.len();
        let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
        self.out.resize(start + len, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(bytes, &mut self.out[start..])
            .unwrap_or(0);
        self.out.truncate(start + written);
    }

    fn opt_str(&mut self, key: &[u8], value: Option<&str>) {
        if let Some(value) = value {
            self.raw(key);
            self.str(value);
        }
    }

    fn timestamp(&mut self, value: Timestamp) {
        self.out.push(b'"');
        self.raw(value.json_text().as_bytes());
        self.out.push(b'"');
    }

    fn ownership(&mut self, o: &ResourceLeaseOwnershipHandle) {
        self.raw(b"{\"sequenceId\":");
        self.int(o.sequence_id);
        self.raw(b",\"attempt\":");
        self.int(o.attempt);
        self.raw(b",\"leaseId\":\"");
        let mut buf = uuid::Uuid::encode_buffer();
        self.raw(o.lease_id.hyphenated().encode_lower(&mut buf).as_bytes());
        self.raw(b"\"}");
    }

    fn payload(&mut self, p: &ResourceLeaseItemPayload) {
        self.raw(b"{\"resourceType\":");
        self.str(&p.resource_type);
        self.raw(b",\"resourceId\":");
        self.str(&p.resource_id);
        self.raw(b",\"partitionKey\":");
        self.str(&p.partition_key);
        self.raw(b",\"payloadEncoding\":");
        self.str(&p.payload_encoding);
        // System.Text.Json writes base64 unescaped ('+' stays '+').
        self.raw(b",\"body\":\"");
        self.base64(&p.body);
        self.raw(b"\"");
        if let Some(attributes) = &p.attributes {
            self.raw(b",\"attributes\":");
            self.map(attributes);
        }
        self.opt_str(b",\"requestId\":", p.request_id.as_deref());
        self.raw(b"}");
    }

    fn error(&mut self, e: &ResourceLeaseErrorInfo) {
        self.raw(b"{\"message\":");
        self.str(&e.message);
        self.opt_str(b",\"code\":", e.code.as_deref());
        self.raw(b"}");
    }

    fn map(&mut self, map: &Metadata) {
        self.raw(b"{");
        for (i, (k, v)) in map.iter().enumerate() {
            if i > 0 {
                self.raw(b",");
            }
            self.str(k);
            self.raw(b":");
            self.str(v);
        }
        self.raw(b"}");
    }

    fn pending_item(&mut self, item: &ResourceLeasePendingItem) {
        self.raw(b"{\"payload\":");
        self.payload(&item.payload);
        self.raw(b",\"attempt\":");
        self.int(item.attempt);
        self.raw(b",\"enqueuedAt\":");
        self.timestamp(item.enqueued_at);
        if let Some(error) = &item.last_error {
            self.raw(b",\"lastError\":");
            self.error(error);
        }
        self.raw(b",\"sequenceId\":");
        self.int(item.sequence_id);
        if let Some(token) = &item.last_ownership_token {
            self.raw(b",\"lastOwnershipToken\":");
            self.ownership(token);
        }
        self.raw(b"}");
    }
}

/// Whether System.Text.Json's default encoder writes this ASCII byte as
/// is: printable ASCII except `"`, `&`, `'`, `+`, `<`, `>`, `\` and `` ` ``.
const fn passes_unescaped(b: u8) -> bool {
    matches!(b, 0x20..=0x7E)
        && !matches!(b, b'"' | b'&' | b'\'' | b'+' | b'<' | b'>' | b'\\' | b'`')
}

/// [`passes_unescaped`] for every byte value (false for non-ASCII bytes).
const PASSES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = passes_unescaped(b as u8);
        b += 1;
    }
    table
};

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `value` escaped as System.Text.Json's default encoder does:
/// `\n`, `\r`, `\t`, `\b`, `\f` and `\\` in short form; every other escaped
/// character, `"` included, as `\uXXXX` with uppercase hex, non-ASCII
/// characters as UTF-16 code units (surrogate pairs beyond the BMP).
pub(crate) fn escape_into(value: &str, out: &mut Vec<u8>) {
    let bytes = value.as_bytes();
    let (mut start, mut i) = (0, 0);
    // `i` advances by whole characters, so it is always a char boundary.
    while i < bytes.len() {
        let b = bytes[i];
        if PASSES[usize::from(b)] {
            i += 1;
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if b < 0x80 {
            escape_ascii(b, out);
            i += 1;
            start = i;
            continue;
        }
        let c = value[i..]
            .chars()
            .next()
            .unwrap_or(char::REPLACEMENT_CHARACTER);
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            push_unicode_escape(*unit, out);
        }
        i += c.len_utf8();
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

fn escape_ascii(b: u8, out: &mut Vec<u8>) {
    match b {
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        b'\\' => out.extend_from_slice(b"\\\\"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0C => out.extend_from_slice(b"\\f"),
        _ => push_unicode_escape(u16::from(b), out),
    }
}

fn push_unicode_escape(unit: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[usize::from((unit >> shift) & 0xF)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(value: &str) -> String {
        let mut out = Vec::new();
        escape_into(value, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_like_system_text_json() {
        assert_eq!(escaped("plain-text_1.2/3"), "plain-text_1.2/3");
        assert_eq!(escaped("a\"b"), "a\\u0022b");
        assert_eq!(
            escaped("<a href='x'>&+`</a>"),
            "\\u003Ca href=\\u0027x\\u0027\\u003E\\u0026\\u002B\\u0060\\u003C/a\\u003E"
        );
        assert_eq!(
            escaped("\\\n\r\t\u{8}\u{c}\u{1}\u{7f}"),
            "\\\\\\n\\r\\t\\b\\f\\u0001\\u007F"
        );
        assert_eq!(escaped("café"), "caf\\u00E9");
        assert_eq!(escaped("€ ✓"), "\\u20AC \\u2713");
        assert_eq!(escaped("😀x"), "\\uD83D\\uDE00x");
    }

    #[test]
    fn escaped_text_reads_back_unchanged() {
        let tricky = "mixé \"quoted\" <tag> + 😀\u{0}\u{1f}\\";
        let json = format!("\"{}\"", escaped(tricky));
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, tricky);
    }
}
