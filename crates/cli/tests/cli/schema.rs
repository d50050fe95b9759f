use std::path::Path;

use base64::Engine as _;
use omnirelay_replication::WireVersion;
use omnirelay_resourcelease::ResourceLeaseReplicationEventType;

use crate::{omnirelay, text};

fn fixtures(version: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../resourcelease/fixtures")
        .join(version);
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (
                name,
                std::fs::read_to_string(&p).unwrap().trim_end().to_owned(),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 8);
    out
}

#[test]
fn json_to_protobuf_to_json_is_lossless_for_every_fixture() {
    for (version, write) in [("v1", "1"), ("v2", "2")] {
        let docs = fixtures(version);
        let input: String = docs.iter().map(|(_, d)| format!("{d}\n")).collect();
        let to_proto = omnirelay(
            &[
                "schema",
                "convert",
                "--from",
                "json",
                "--to",
                "proto",
                "--write-version",
                write,
            ],
            input.as_bytes(),
        );
        assert!(to_proto.status.success(), "{}", text(&to_proto.stderr));
        let proto_lines = text(&to_proto.stdout);
        assert_eq!(proto_lines.lines().count(), docs.len());
        // Each line is the base64 of the checked-in protobuf fixture.
        for ((name, _), line) in docs.iter().zip(proto_lines.lines()) {
            let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../resourcelease/fixtures")
                .join(version)
                .join(name.replace(".json", ".binpb"));
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(line)
                .unwrap();
            assert_eq!(bytes, std::fs::read(golden).unwrap(), "{version}/{name}");
        }
        let back = omnirelay(
            &[
                "schema",
                "convert",
                "--from",
                "proto",
                "--to",
                "json",
                "--write-version",
                write,
            ],
            proto_lines.as_bytes(),
        );
        assert!(back.status.success(), "{}", text(&back.stderr));
        assert_eq!(
            text(&back.stdout),
            input,
            "{version}: JSON -> protobuf -> JSON changed something"
        );
    }
}

#[test]
fn the_default_write_version_is_the_reference_format() {
    let (_, v2_enqueue) = fixtures("v2")
        .into_iter()
        .find(|(n, _)| n == "enqueue.json")
        .unwrap();
    let out = omnirelay(
        &["schema", "convert", "--from", "json", "--to", "json"],
        v2_enqueue.as_bytes(),
    );
    assert!(out.status.success());
    let doc = text(&out.stdout);
    assert!(
        doc.starts_with(r#"{"sequenceNumber":1,"eventType":"Enqueue""#),
        "{doc}"
    );
    assert!(
        !doc.contains("schemaVersion") && !doc.contains("streamId"),
        "{doc}"
    );
}

#[test]
fn events_version_1_lacks_are_skipped_and_reported() {
    let input = fixtures("v2")
        .into_iter()
        .map(|(_, d)| d + "\n")
        .collect::<String>();
    let out = omnirelay(
        &[
            "schema",
            "convert",
            "--from",
            "json",
            "--to",
            "json",
            "--write-version",
            "1",
        ],
        input.as_bytes(),
    );
    assert!(out.status.success(), "skips are not failures");
    let stderr = text(&out.stderr);
    // One fixture per type: one skip per type that version 1 lacks.
    let v2_only: Vec<_> = ResourceLeaseReplicationEventType::ALL
        .into_iter()
        .filter(|t| t.since() == WireVersion::V2)
        .collect();
    let skipped = v2_only.len();
    assert!(skipped > 0);
    assert_eq!(
        stderr.matches("skipped: ").count(),
        v2_only.len(),
        "{stderr}"
    );
    for t in v2_only {
        assert!(
            stderr.contains(&format!("skipped: {t} events have no form in schema v1")),
            "{stderr}"
        );
    }
    assert_eq!(text(&out.stdout).lines().count(), fixtures("v2").len() - 4);
}

#[test]
fn check_reports_invalid_lines_by_number() {
    let (_, good) = fixtures("v1").into_iter().next().unwrap();
    let input = format!(
        "{good}\n{{\"sequenceNumber\":\"x\",\"eventType\":1}}\n\n{{\"eventType\":99}}\n{good}\nnot json at all\n"
    );
    let out = omnirelay(&["schema", "check"], input.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    let lines: Vec<_> = report.lines().collect();
    assert_eq!(lines.len(), 3, "{report}");
    assert_eq!(lines[0], "line 2: sequenceNumber: \"x\" is not an integer");
    assert_eq!(lines[1], "line 4: unknown event type 99");
    assert!(lines[2].starts_with("line 6: invalid json"), "{}", lines[2]);
    assert!(text(&out.stderr).contains("checked 5 events: 2 valid, 3 invalid"));

    let all_good = omnirelay(&["schema", "check"], format!("{good}\n{good}\n").as_bytes());
    // The word the command's summary uses works too.
    let validated = omnirelay(&["schema", "validate"], format!("{good}\n").as_bytes());
    assert!(validated.status.success(), "{}", text(&validated.stderr));
    assert_eq!(all_good.status.code(), Some(0));
    assert_eq!(text(&all_good.stdout), "");
}

#[test]
fn bad_input_never_panics_and_fails_cleanly() {
    let garbage: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    for args in [
        &["schema", "check"][..],
        &["schema", "convert", "--from", "json", "--to", "proto"],
        &["schema", "convert", "--from", "proto", "--to", "json"],
    ] {
        let out = omnirelay(args, &garbage);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let out = omnirelay(
        &[
            "schema",
            "convert",
            "--from",
            "json",
            "--to",
            "proto",
            "--write-version",
            "3",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--write-version"),
        "{}",
        text(&out.stderr)
    );
    let out = omnirelay(&["schema", "convert", "--from", "xml", "--to", "json"], b"");
    assert_eq!(out.status.code(), Some(2));
}
