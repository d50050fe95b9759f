//! Line-oriented conversion and checking of event streams, the engine of
//! `omnirelay schema convert` and `omnirelay schema check`.
//!
//! Input is one event per line: a JSON document, or the standard base64 of
//! a protobuf message. Blank lines are skipped. A bad line is reported as
//! `line N: reason` and never stops the run.

use std::io::{self, BufRead, Write};

use base64::Engine as _;
use omnirelay_replication::{Encoding, Format, WireVersion};

use crate::error::{DecodeError, EncodeError};
use crate::event::ResourceLeaseReplicationEvent;
use crate::{codec, json};

/// What a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Non-blank lines read.
    pub lines: u64,
    /// Events written (convert) or found valid (check).
    pub ok: u64,
    /// Events that have no form in the output version, reported and left
    /// out.
    pub skipped: u64,
    /// Lines that could not be read.
    pub invalid: u64,
}

/// Converts events from `from` to `to` in schema `version`, one per line.
///
/// Each invalid line is reported to `diagnostics` as `line N: reason`;
/// each event with no form in `version` as `line N: skipped: reason`.
///
/// # Errors
///
/// Only I/O errors of the three streams; bad input is reported, not
/// returned.
pub fn convert(
    input: impl BufRead,
    mut output: impl Write,
    mut diagnostics: impl Write,
    from: Format,
    to: Format,
    version: WireVersion,
) -> io::Result<Summary> {
    let mut summary = Summary::default();
    let mut encoded = Vec::with_capacity(1024);
    for_each_line(input, |number, line| {
        summary.lines += 1;
        let event = match read_event(from, line) {
            Ok(event) => event,
            Err(err) => {
                summary.invalid += 1;
                return writeln!(diagnostics, "line {number}: {err}");
            }
        };
        encoded.clear();
        match write_event(&event, to, version, &mut encoded) {
            Ok(()) => {
                summary.ok += 1;
                encoded.push(b'\n');
                output.write_all(&encoded)
            }
            Err(err @ EncodeError::Unrepresentable { .. }) => {
                summary.skipped += 1;
                writeln!(diagnostics, "line {number}: skipped: {err}")
            }
            Err(err) => {
                summary.invalid += 1;
                writeln!(diagnostics, "line {number}: {err}")
            }
        }
    })?;
    output.flush()?;
    Ok(summary)
}

/// Checks that every line is a valid JSON event, reporting each invalid
/// one to `report` as `line N: reason`.
///
/// # Errors
///
/// Only I/O errors.
pub fn check(input: impl BufRead, mut report: impl Write) -> io::Result<Summary> {
    let mut summary = Summary::default();
    for_each_line(input, |number, line| {
        summary.lines += 1;
        match json::decode(line) {
            Ok(_) => {
                summary.ok += 1;
                Ok(())
            }
            Err(err) => {
                summary.invalid += 1;
                writeln!(report, "line {number}: {err}")
            }
        }
    })?;
    report.flush()?;
    Ok(summary)
}

/// Decodes one line of `format`: a JSON document, or the base64 of a
/// protobuf message.
///
/// # Errors
///
/// [`DecodeError`] for invalid input, including invalid base64.
pub fn read_event(
    format: Format,
    line: &[u8],
) -> Result<ResourceLeaseReplicationEvent, DecodeError> {
    if format == Format::Protobuf {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(line.trim_ascii())
            .map_err(|e| DecodeError::Protobuf(format!("invalid base64: {e}")))?;
        return codec::decode(format, &bytes);
    }
    codec::decode(format, line)
}

/// Appends one line (without the newline) of `event` in `format`.
///
/// # Errors
///
/// [`EncodeError`] if the event has no form in `version`.
pub fn write_event(
    event: &ResourceLeaseReplicationEvent,
    format: Format,
    version: WireVersion,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    match format {
        Format::Json => json::encode_into(event, version, out),
        Format::Protobuf => {
            let bytes = codec::encode(event, Encoding::new(format, version))?;
            let text = base64::engine::general_purpose::STANDARD.encode(bytes);
            out.extend_from_slice(text.as_bytes());
            Ok(())
        }
        other => Err(EncodeError::UnsupportedFormat(other)),
    }
}

/// Calls `f` with the 1-based number and content of every non-blank line,
/// without its line ending. Lines need not be UTF-8.
fn for_each_line(
    mut input: impl BufRead,
    mut f: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut line = Vec::with_capacity(1024);
    let mut number = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(&line);
        if content.trim_ascii().is_empty() {
            continue;
        }
        f(number, content)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENQUEUE: &str = r#"{"sequenceNumber":1,"eventType":"Enqueue","timestamp":"2025-11-27T18:49:03+00:00","metadata":{}}"#;

    fn run_convert(
        input: &str,
        from: Format,
        to: Format,
        version: WireVersion,
    ) -> (String, String, Summary) {
        let (mut out, mut diag) = (Vec::new(), Vec::new());
        let summary = convert(input.as_bytes(), &mut out, &mut diag, from, to, version).unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(diag).unwrap(),
            summary,
        )
    }

    #[test]
    fn converts_json_to_protobuf_and_back() {
        let (pb, diag, summary) = run_convert(
            &format!("{ENQUEUE}\n"),
            Format::Json,
            Format::Protobuf,
            WireVersion::V1,
        );
        assert_eq!(diag, "");
        assert_eq!(
            summary,
            Summary {
                lines: 1,
                ok: 1,
                skipped: 0,
                invalid: 0
            }
        );
        let (json, _, _) = run_convert(&pb, Format::Protobuf, Format::Json, WireVersion::V1);
        assert_eq!(json, format!("{ENQUEUE}\n"));
    }

    #[test]
    fn reports_bad_lines_by_number_and_carries_on() {
        let input =
            format!("{ENQUEUE}\r\n\n   \nnot json\n{{\"eventType\":99}}\n\u{ff}\n{ENQUEUE}");
        let (out, diag, summary) = run_convert(&input, Format::Json, Format::Json, WireVersion::V2);
        assert_eq!(out.lines().count(), 2);
        assert!(out.starts_with(r#"{"schemaVersion":2,"#));
        let diag: Vec<_> = diag.lines().collect();
        assert_eq!(diag.len(), 3, "{diag:?}");
        assert!(diag[0].starts_with("line 4: invalid json"), "{}", diag[0]);
        assert_eq!(diag[1], "line 5: unknown event type 99");
        assert!(diag[2].starts_with("line 6: invalid json"), "{}", diag[2]);
        assert_eq!(
            summary,
            Summary {
                lines: 5,
                ok: 2,
                skipped: 0,
                invalid: 3
            }
        );
    }

    #[test]
    fn skips_events_without_a_form_in_the_output_version() {
        let input = r#"{"schemaVersion":2,"eventType":"Requeued"}"#;
        let (out, diag, summary) = run_convert(input, Format::Json, Format::Json, WireVersion::V1);
        assert_eq!(out, "");
        assert_eq!(
            diag,
            "line 1: skipped: Requeued events have no form in schema v1 (they need v2)\n"
        );
        assert_eq!(summary.skipped, 1);
    }

    #[test]
    fn protobuf_lines_must_be_base64() {
        let (_, diag, summary) =
            run_convert("%%%\n", Format::Protobuf, Format::Json, WireVersion::V1);
        assert!(
            diag.starts_with("line 1: invalid protobuf: invalid base64"),
            "{diag}"
        );
        assert_eq!(summary.invalid, 1);
    }

    #[test]
    fn check_prints_each_invalid_line() {
        let input = format!(
            "{ENQUEUE}\n{{\"sequenceNumber\":\"x\",\"eventType\":1}}\n\n{{\"schemaVersion\":99,\"eventType\":1}}\n"
        );
        let mut report = Vec::new();
        let summary = check(input.as_bytes(), &mut report).unwrap();
        assert_eq!(
            String::from_utf8(report).unwrap(),
            "line 2: sequenceNumber: \"x\" is not an integer\nline 4: unsupported schema version 99 (this reader knows 1 and 2)\n"
        );
        assert_eq!(
            summary,
            Summary {
                lines: 3,
                ok: 1,
                skipped: 0,
                invalid: 2
            }
        );
    }
}
